"""Probe of 2026-12-05 (probe 50, mutation testing, thirty-first round): tests that kill the mutants the existing
tests let through in the code added by the last two sessions -- the conformance checker
(``ssmkit.layers.conformance``), reading your own data (``ssmkit.sysid.userdata``), the masked batch norm and the
padding-mask helpers, the bytes and FLOP bounds of ``ssmkit.bench.limits``, the discretisation's ``widen`` and
series coefficients, and the weight-gradient sums of the MIMO scan (``_gram``, ``_TallProduct``).

Each test asserts against an independent reference: a toy layer built to break exactly one rule of the layer protocol
(the checker must fail it at that check, with that message, and pass it when the rule holds), a hand count, a
closed form, or a float64 sum written here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ssmkit.layers import Capabilities, TensorSpec
from ssmkit.layers.conformance import CHECKS, ConformanceError, _rel_err, _require, _state_err, check_layer
from ssmkit.models.block import masked_batch_norm
from ssmkit.ops.discretize import _series_coefficients, widen
from ssmkit.ops.mimo import mimo_scan_chunked, mimo_scan_reference
from ssmkit.sysid import from_arrays, from_csv
from ssmkit.sysid.userdata import read_columns, sampling_time
from tests.layers.test_conformance import Decay

F64 = torch.float64


# ---------------------------------------------------------------------------------------------------------------------
# 1. the conformance checker: toys that each break one rule


class NaNStep(Decay):
    def _step(self, x_t, state):
        y, h = super()._step(x_t, state)
        return y * torch.tensor([1.0, float("nan"), 1.0], dtype=y.dtype), h  # one channel's y is NaN


class NonZeroInitialState(Decay):
    def initial_state(self, batch_size):
        return torch.ones(batch_size, self.d_model, dtype=self.b.dtype)


class WritesItsInput(Decay):
    def _forward(self, x, state, return_state):
        out = super()._forward(x, state, return_state)
        x.mul_(2.0)
        return out


class Float32Output(Decay):
    def _forward(self, x, state, return_state):
        y, h = super()._forward(x, state, return_state)
        return y.float(), h


class InfOutput(Decay):
    def _forward(self, x, state, return_state):
        y, h = super()._forward(x, state, return_state)
        y = y.clone()
        y[0, 0, 0] = math.inf
        return y, h


class TwoSidedWithState(Decay):
    anticausal = True

    def __init__(self):
        super().__init__()
        self.bidirectional = True

    def _forward(self, x, state, return_state):
        return super()._forward(x, state, True)  # a state although bidirectional


class AlwaysReturnsState(Decay):
    def _forward(self, x, state, return_state):
        return super()._forward(x, state, True)


class LengthOneTwice(Decay):
    def _forward(self, x, state, return_state):
        y, h = super()._forward(x, state, return_state)
        return (torch.cat([y, y], 1) if x.shape[1] == 1 else y), h


class FirstInputOnly(Decay):
    def _forward(self, x, state, return_state):
        return super()._forward(x[:, :1].expand_as(x).contiguous(), state, return_state)  # ignores x from t = 1


class WritesInBackward(Decay):
    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=F64))

    def _forward(self, x, state, return_state):
        y, h = super()._forward(x, state, return_state)
        if y.requires_grad:
            y.register_hook(lambda g: self.calls.add_(1) and None)
        return y, h


class DependsOnGradMode(Decay):
    def _forward(self, x, state, return_state):
        y, h = super()._forward(x, state, return_state)
        return (y * (1 + 1e-6) if torch.is_grad_enabled() else y), h


class ThirdItemSeesFirst(Decay):
    def _forward(self, x, state, return_state):
        y, h = super()._forward(x, state, return_state)
        if x.shape[0] >= 3:
            y = y + 0.1 * torch.cat([torch.zeros_like(x[:2]), x[:1]], 0)
        return y, h


class StateMixesBatch(Decay):
    def _forward(self, x, state, return_state):
        y, h = super()._forward(x, state, return_state)
        return y, (None if h is None else h + 0.1 * h.mean(0, keepdim=True))


class LastTokenIgnoresState(Decay):
    def _forward(self, x, state, return_state):
        if state is not None and x.shape[1] == 1:
            state = torch.zeros_like(state)
        return super()._forward(x, state, return_state)


class WrongStateAfterContinuing(Decay):
    def _forward(self, x, state, return_state):
        y, h = super()._forward(x, state, return_state)
        return y, (h * 1.5 if state is not None and h is not None else h)


class _ScaledBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return ctx.factor * g, None


class WrongBackwardFromAState(Decay):
    factor = 1.5  # the gradient of x in a call from a state, times this

    def _forward(self, x, state, return_state):
        if state is not None:
            x = _ScaledBackward.apply(x, self.factor)
        return super()._forward(x, state, return_state)


class SlightlyWrongBackwardFromAState(WrongBackwardFromAState):
    factor = 1 + 5e-10  # between rtol (1e-10) and the default grad_rtol (10 rtol)


class TwoOutputsPerChannel(Decay):
    def _state_space(self):
        from ssmkit.analysis import StateSpace

        a, b, c, d = (t.detach().double().reshape(-1, 1, 1).numpy() for t in
                      (torch.sigmoid(self.logit_a), self.b, self.c, self.d))
        return StateSpace(a, b, np.concatenate([c * a, c], 1), np.concatenate([d + c * b, d], 1), dt=1.0)


class CounterState(Decay):
    """State (h, n): n counts tokens, by 1 in forward and by 2 in step; y does not read n."""

    def state_spec(self):
        return (TensorSpec((self.d_model,), self.b.dtype), TensorSpec((1,), self.b.dtype))

    def _forward(self, x, state, return_state):
        h, n = (None, x.new_zeros(x.shape[0], 1)) if state is None else state
        y, h = super()._forward(x, h, True)
        return y, ((h, n + x.shape[1]) if return_state else None)

    def _step(self, x_t, state):
        y, h = super()._step(x_t, state[0])
        return y, (h, state[1] + 2)


class WritesInStep(Decay):
    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=F64))

    def _step(self, x_t, state):
        self.calls += 1
        return super()._step(x_t, state)


class Float32Step(Decay):
    def _step(self, x_t, state):
        y, h = super()._step(x_t, state)
        return y.float(), h


class _InfGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t):
        return t.clone()

    @staticmethod
    def backward(ctx, g):
        return g * math.inf


class InfiniteGradient(Decay):
    def _forward(self, x, state, return_state):
        d = self.d
        self.__dict__["d"] = _InfGradient.apply(d)  # read d through a node whose backward is inf
        try:
            return super()._forward(x, state, return_state)
        finally:
            del self.__dict__["d"]


class StepRaisesRuntimeError(Decay):
    capabilities = Capabilities(kernel=True, state_space=True, step=False)

    def step(self, x_t, state):
        raise RuntimeError("boom")


class BoolWidth(Decay):
    def __init__(self):
        super().__init__()
        self.d_model = True


class KernelTooLong(Decay):
    def _kernel(self, L):
        return super()._kernel(L + 1)


class Float32Kernel(Decay):
    def _kernel(self, L):
        return super()._kernel(L).float()


class NaNBuffer(Decay):
    def __init__(self):
        super().__init__()
        self.register_buffer("unused", torch.full((2,), math.nan, dtype=F64))


class AddsABufferInForward(Decay):
    def _forward(self, x, state, return_state):
        self.register_buffer(f"seen{len(list(self.buffers()))}", torch.ones(1, dtype=F64))  # a new one each call
        return super()._forward(x, state, return_state)


class LeaksOnlyInf(Decay):
    def _forward(self, x, state, return_state):
        y, h = super()._forward(x, state, return_state)
        leak = torch.where(torch.isinf(x[:1]), x[:1], torch.zeros_like(x[:1]))  # 0 unless item 0 holds an inf
        return y + torch.cat([torch.zeros_like(x[:1]), leak.expand_as(x[1:])], 0), h


class ParameterOnlyFromAState(Decay):
    def __init__(self):
        super().__init__()
        self.e = nn.Parameter(torch.ones(self.d_model, dtype=F64))

    def _forward(self, x, state, return_state):
        y, h = super()._forward(x, state, return_state)
        return (y if state is None else y + 0.0 * self.e), h


class DetachesItsState(Decay):
    def _forward(self, x, state, return_state):
        return super()._forward(x, None if state is None else state.detach(), return_state)


class ComplexPole(Decay):
    """h_t = λ ⊙ h_{t-1} + b ⊙ x_t with a complex parameter λ = 0.6 e^{0.9j} and a complex128 state, y_t = Re(c ⊙ h_t)
    + d ⊙ x_t. A float64 copy must keep λ complex (complex128): cast to float64 it would lose Im λ and the state
    would be real."""

    capabilities = Capabilities(kernel=True, state_space=False, step=True)

    def __init__(self):
        super().__init__()
        del self.logit_a  # λ instead
        self.lam = nn.Parameter(torch.full((self.d_model,), 0.6 * complex(math.cos(0.9), math.sin(0.9)),
                                           dtype=torch.complex128))

    def state_spec(self):
        return TensorSpec((self.d_model,), torch.complex128)

    def _forward(self, x, state, return_state):
        h = x.new_zeros(x.shape[0], self.d_model, dtype=torch.complex128) if state is None else state
        ys = []
        for t in range(x.shape[1]):
            h = self.lam * h + self.b * x[:, t]
            ys.append((self.c * h).real + self.d * x[:, t])
        return torch.stack(ys, 1), (h if return_state else None)

    def _step(self, x_t, state):
        h = self.lam * state + self.b * x_t
        return (self.c * h).real + self.d * x_t, h

    def _kernel(self, L):
        K = (self.c * self.b)[:, None] * self.lam[:, None] ** torch.arange(L, dtype=F64)
        return torch.cat([K[:, :1].real + self.d[:, None], K[:, 1:].real], 1)


FAILS = [
    (NaNStep, {}, "step", r"stepping token by token differs from forward in y \(error nan > 1e-10\)"),
    (NonZeroInitialState, {}, "state_spec", r"initial_state\(1\) is not zero"),
    (WritesItsInput, {}, "output", "forward wrote into its input x"),
    (Float32Output, {}, "output", r"y must be \(2, 24, 3\) torch.float64 .*; got \(2, 24, 3\) torch.float32"),
    (InfOutput, {}, "output", "y is not finite for a finite input"),
    (TwoSidedWithState, {}, "output", r"a bidirectional layer returns no state \(None\); got one"),
    (AlwaysReturnsState, {}, "output", r"forward\(x, return_state=False\) must return None as its state"),
    (LengthOneTwice, {}, "output", r"y must be \(2, 1, 3\) for an input of length 1; got \(2, 2, 3\)"),
    (FirstInputOnly, {}, "causality", "y from t0=1 on did not change when x did"),
    (WritesInBackward, {}, "purity", "calls changed during forward and backward"),
    (DependsOnGradMode, {}, "purity", "the same forward call twice gave different outputs"),
    (ThirdItemSeesFirst, {"batch_size": 3}, "batch", "a NaN in batch item 0 reached item 2's output"),
    (StateMixesBatch, {}, "batch", "batch item 1's final state differs from the item run alone"),
    (LastTokenIgnoresState, {}, "chunked", r"forward\(x\[:, :23\]\) continued by forward\(x\[:, 23:\], state\)"),
    (WrongStateAfterContinuing, {}, "chunked", "the final state after chunks split at 1 differs"),
    (WrongBackwardFromAState, {}, "chunked", "the gradient of x through two chunks differs from the one pass"),
    (CounterState, {}, "step", "the state after stepping differs from forward's"),
    (WritesInStep, {}, "step", "calls changed during step"),
    (Float32Step, {}, "step", r"step's y_t must be \(2, 3\) torch.float64; got \(2, 3\) torch.float32"),
    (InfiniteGradient, {"skip": ("chunked",)}, "gradients", "parameter d's gradient is not finite"),
    (StepRaisesRuntimeError, {}, "step", r"the layer lacks step \(supports\('step'\) is False\) but calling it "
                                         "raised RuntimeError instead of NotImplementedError: boom"),
    (BoolWidth, {}, "output", r"d_model must be a positive int \(the input's H\); got True"),
    (KernelTooLong, {}, "kernel", r"kernel\(24\) must be one of \[\(3, 24\), \(3, 3, 24\)\] in torch.float64; got "
                                  r"\(3, 25\) torch.float64"),
    (Float32Kernel, {}, "kernel", r"kernel\(24\) must be one of .* in torch.float64; got \(3, 24\) torch.float32"),
    (AddsABufferInForward, {}, "purity", r"seen\d+ changed during forward and backward"),
    (LeaksOnlyInf, {}, "batch", "a NaN in batch item 0 reached item 1's output"),
    (ParameterOnlyFromAState, {}, "chunked", "the gradient of e is None in one of the one-pass and chunked "
                                             "runs only"),
    (TwoOutputsPerChannel, {}, "state_space", r"state_space\(\) must map H = 3 inputs to H outputs; got 3 systems of 1 "
                                              "inputs and 2 outputs"),
    (DetachesItsState, {"skip": ("chunked",)}, "gradients", "state tensor 0 gets no gradient"),
]


@pytest.mark.parametrize("cls,kwargs,check,message", FAILS, ids=[c.__name__ for c, *_ in FAILS])
def test_each_broken_toy_fails_its_check_with_its_message(cls, kwargs, check, message):
    """Each toy breaks one rule; the checker stops at that check (not a later one) with that message."""
    with pytest.raises(ConformanceError, match=f"{cls.__name__} fails check '{check}': (?:{message})") as info:
        check_layer(cls(), **kwargs)
    assert info.value.check == check


@pytest.mark.parametrize("cls", [NaNBuffer, ComplexPole])
def test_toys_that_follow_the_rules_pass(cls):
    """A buffer holding NaN that forward never touches is unchanged (NaN equals NaN in the purity snapshot); a complex
    parameter stays complex in the float64 copy."""
    results = check_layer(cls())
    skipped = "skipped: the layer does not define it"
    assert all(outcome.startswith(("passed", skipped)) for outcome in results.values()), results
    assert results["kernel"].startswith("passed") and results["step"].startswith("passed")


def test_the_measures_against_hand_computation():
    a = torch.tensor([[1.0, -2.0], [3.0, 4.0]], dtype=F64)
    b = torch.tensor([[1.5, -2.0], [3.0, -8.0]], dtype=F64)
    assert _rel_err(a, b) == 12.0 / 8.0  # max |a - b| = |4 - (-8)|, max |b| = 8
    assert _rel_err(a[:1], a) == math.inf  # shapes (1, 2) and (2, 2): no broadcast
    assert _rel_err(a[0], a) == math.inf
    assert _state_err((a,), (a, a)) == math.inf and _state_err((a, b), (a, a)) == 12.0 / 4.0
    with pytest.raises(Exception, match="what"):
        _require(math.nan, 1.0, "what")  # a NaN error fails
    assert _require(0.5, 0.5, "what") == 0.5


def test_rtol_and_grad_rtol_must_be_below_one():
    for name in ("rtol", "grad_rtol"):
        for bad in (1, 1.5):
            with pytest.raises(ValueError, match=rf"{name} must be a float in \(0, 1\) or None; got {bad}"):
                check_layer(Decay(), **{name: bad})


def test_the_gradients_default_tolerance_is_ten_rtol():
    """A chunked gradient off by 5e-10 relative passes the default grad_rtol = 10 rtol = 1e-9 and fails 1e-10."""
    results = check_layer(SlightlyWrongBackwardFromAState(), skip=CHECKS[6:])
    grad_err = float(results["chunked"].split("gradients ")[1].split(" ")[0])
    assert 1e-10 < grad_err <= 5.1e-10 and results["chunked"].endswith("(tolerance 1e-09)")
    with pytest.raises(ConformanceError, match="the gradient of x through two chunks differs"):
        check_layer(SlightlyWrongBackwardFromAState(), grad_rtol=1e-10, skip=CHECKS[6:])


# ---------------------------------------------------------------------------------------------------------------------
# 2. your own data: from_arrays, from_csv, read_columns, sampling_time


def _write(path, header: str, rows) -> None:
    path.write_text(header + "\n" + "\n".join(",".join(repr(float(v)) for v in row) for row in rows) + "\n")


def test_from_arrays_square_data_default_names_and_rounding():
    """L = m is time first (5 samples of 5 inputs): accepted; unnamed inputs are u1..u5; the held-out tail is
    round(L·fraction) samples (7 · 0.5 = 3.5 -> 4, Python's round half to even), the rest trains."""
    u = np.arange(25.0).reshape(5, 5)
    y = np.arange(5.0)
    bench = from_arrays(u, y, 0.1, test=(u[::-1], y[::-1]))
    np.testing.assert_array_equal(bench.train[0].u.numpy(), u)
    np.testing.assert_array_equal(bench.test[0].u.numpy(), u[::-1])
    assert "inputs u1, u2, u3, u4, u5; outputs y;" in bench.notes
    seven = from_arrays(np.arange(7.0), np.arange(7.0), 0.1, test=0.5, n_init=0)
    assert (len(seven.train[0]), len(seven.test[0])) == (7 - round(3.5), round(3.5)) == (3, 4)
    assert (seven.train[0].name, seven.test[0].name) == ("user_data [:3]", "user_data [3:]")
    with pytest.raises(ValueError, match=r"the experiment \(3 samples\) is too short to hold out 50% as the test"):
        from_arrays(np.arange(3.0), np.arange(3.0), 0.1, test=0.5)  # cut 3 - round(1.5) = 1 < 2


def test_from_arrays_checks_the_test_pair_and_n_init():
    u, y = np.linspace(0, 1, 40), np.linspace(1, 2, 40)
    bad = u.copy()
    bad[4] = np.inf
    with pytest.raises(ValueError, match="u_test holds 1 non-finite value.*the first is inf at row 4, channel 'volts'"):
        from_arrays(u, y, 0.1, test=(bad, y), input_names=["volts"])
    with pytest.raises(ValueError, match=r"u_test and y_test must have one length; got \(40, 1\) and \(39, 1\)"):
        from_arrays(u, y, 0.1, test=(u, y[:-1]))
    with pytest.raises(ValueError, match="the test data must have the training data's m = 1 inputs and p = 1 outputs"):
        from_arrays(u, y, 0.1, test=(u, np.stack([y, y], 1)))
    with pytest.raises(ValueError, match=r"n_init must be None or an int in \[0, 40\).*got -1"):
        from_arrays(u, y, 0.1, test=(u, y), n_init=-1)


def test_from_csv_sampling_times_across_files(tmp_path):
    """Every file's time column must give the first file's Ts to TIME_TOLERANCE (1e-3): an estimation file at
    1.005 Ts (0.5 % off) is refused, as a test file is; 1.0005 Ts is accepted."""
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    _write(a, "t,u,y", [(k * 0.01, math.sin(k), math.cos(k)) for k in range(50)])
    _write(b, "t,u,y", [(k * 0.01005, math.sin(k), math.cos(k)) for k in range(50)])
    with pytest.raises(ValueError, match=r"b.csv's time column gives Ts = 0.01005 s, a.csv's 0.01 s"):
        from_csv([a, b], "u", "y", time="t")
    with pytest.raises(ValueError, match=r"b.csv's time column gives Ts = 0.01005 s"):
        from_csv(a, "u", "y", time="t", test_path=b)
    _write(b, "t,u,y", [(k * 0.0100005, math.sin(k), math.cos(k)) for k in range(50)])
    assert from_csv([a, b], "u", "y", time="t").dt == 0.01 * 49 / 49


def test_sampling_time_refuses_a_drifting_clock_and_infinite_stamps():
    """The stamps are checked against the grid through the ends, not step by step: a clock that drifts by
    0.002 Ts at mid-record (each step within 1e-4 Ts of Ts) is refused; an infinite stamp is refused."""
    n = 201
    t = np.arange(n) * 0.01 + 0.002 * 0.01 * np.sin(np.pi * np.arange(n) / (n - 1))
    with pytest.raises(ValueError, match=r"the stamp of row 101 \(t = 1.00002 s\) lies 2e-05 s \(0.002 Ts\) off"):
        sampling_time(t, "drift")
    with pytest.raises(ValueError, match="the time stamps must increase; they run from 0.0 to inf"):
        sampling_time(np.array([0.0, 1.0, np.inf]))


def test_read_columns_and_from_csv_name_checks(tmp_path):
    p = tmp_path / "d.csv"
    _write(p, "u,y,u", [(1, 2, 3), (4, 5, 6)])
    with pytest.raises(ValueError, match=r"column 'u' appears 2 times in d.csv's header"):
        read_columns(p, ["u"])
    _write(p, "t,u,y", [(k * 0.5, k, -k) for k in range(40)])
    with pytest.raises(ValueError, match=r"inputs names a column twice: \['u', 'u'\]"):
        from_csv(p, ["u", "u"], "y", dt=0.5)
    bench = from_csv(p, [" u "], " y", time=" t ")  # names are stripped, as the header's are
    assert bench.dt == 0.5 and "inputs u; outputs y;" in bench.notes and bench.outputs == ("y",)
    np.testing.assert_array_equal(bench.train[0].u[:, 0].numpy(), np.arange(32.0))
    with pytest.raises(ValueError, match="the time column 't' is also named as an input or an output"):
        from_csv(p, "u", ["y", "t"], time="t")
    with pytest.raises(ValueError, match=r"path must be a file path or a non-empty list of file paths; got \[\]"):
        from_csv([], "u", "y", dt=0.5)
    with pytest.raises(ValueError, match="delimiter must be None .* or one character; got '\\\\n'"):
        read_columns(p, ["u"], delimiter="\n")
    p.write_text("u,y;z\n1,2\n")  # the comma is looked for first
    np.testing.assert_array_equal(read_columns(p, ["y;z"])["y;z"], [2.0])
    p.write_text("u,y\n1,inf\n")
    with pytest.raises(ValueError, match=r"row 1 \(line 2\), column 'y' is 'inf': every sample must be a finite"):
        read_columns(p, ["u", "y"])


def test_from_csv_keeps_every_test_file(tmp_path):
    files = [tmp_path / f"{name}.csv" for name in ("est", "v1", "v2")]
    for i, f in enumerate(files):
        _write(f, "u,y", [(k + 100 * i, -k) for k in range(30)])
    bench = from_csv(files[0], "u", "y", dt=1.0, test_path=files[1:], name="rig")
    assert [r.name for r in bench.test] == ["v1.csv", "v2.csv"]
    np.testing.assert_array_equal(bench.test[1].u[:, 0].numpy(), np.arange(30.0) + 200)


# ---------------------------------------------------------------------------------------------------------------------
# 3. masked_batch_norm called directly


def _token_reference(x: torch.Tensor, mask: torch.Tensor, eps: float) -> torch.Tensor:
    """(x - μ) / √(σ² + ε) over the masked positions, in float64, per channel: (N, H)."""
    tok = x.double()[mask]  # (N, H)
    mean = tok.mean(0)
    var = ((tok - mean) ** 2).mean(0)
    return (tok - mean) / torch.sqrt(var + eps)


def test_masked_batch_norm_takes_half_precision_statistics_in_float32():
    """bfloat16 input with a large mean (100 ± 1): μ and σ² are formed in float32 at least, and y is 0.007 from the
    float64 normalisation of the same inputs (bfloat16's rounding of y); with the statistics in bfloat16, μ was 0.037
    off and y 0.057."""
    g = torch.Generator().manual_seed(0)
    x = (100.0 + torch.randn(4, 256, 3, generator=g, dtype=F64)).to(torch.bfloat16)  # (B, L, H)
    mask = torch.arange(256) < torch.tensor([256, 200, 130, 17])[:, None]
    bn = nn.BatchNorm1d(3).train()
    y = masked_batch_norm(bn, x, mask)
    assert y.dtype == torch.bfloat16
    err = (y[mask].double() - _token_reference(x, mask, bn.eps)).abs().max()
    assert err < 0.02  # bfloat16's rounding of y (|y| < 4: 2^-7 · 4 / 2)


def test_masked_batch_norm_updates_running_statistics_in_training_mode_only():
    """torch's rule: eval mode leaves the running statistics; momentum None with num_batches_tracked None uses 0."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 10, 4, generator=g, dtype=F64)
    mask = torch.arange(10) < torch.tensor([10, 4, 7])[:, None]
    bn = nn.BatchNorm1d(4, dtype=F64)
    with torch.no_grad():
        bn.running_mean.fill_(0.25)
        bn.running_var.fill_(2.0)
    y = masked_batch_norm(bn.eval(), x, mask)  # batch statistics (the function's contract), no update
    assert (y[mask] - _token_reference(x, mask, bn.eps)).abs().max() < 1e-12
    assert torch.equal(bn.running_mean, torch.full((4,), 0.25, dtype=F64)) and int(bn.num_batches_tracked) == 0
    bn = nn.BatchNorm1d(4, momentum=None, dtype=F64).train()
    bn.num_batches_tracked = None
    want = nn.BatchNorm1d(4, momentum=None, dtype=F64).train()
    want.num_batches_tracked = None
    masked_batch_norm(bn, x, mask)
    want(x[mask])  # torch's own on the tokens: factor 0 without a counter
    assert torch.equal(bn.running_mean, want.running_mean) and torch.equal(bn.running_var, want.running_var)
    assert torch.equal(bn.running_mean, torch.zeros(4, dtype=F64))


# ---------------------------------------------------------------------------------------------------------------------
# 4. widen, the series coefficients, and the MIMO product under autocast


def test_widen_doubles_single_precision_only():
    x = torch.tensor([1.0 / 3.0, -2.5e-8], dtype=torch.float32, requires_grad=True)
    z = torch.tensor([1 / 3 + 0.1j, -1e-8j], dtype=torch.complex64)
    wx, wz = widen(x), widen(z)
    assert wx.dtype == F64 and wz.dtype == torch.complex128
    assert torch.equal(wx, x.detach().double()) and torch.equal(wz, z.to(torch.complex128))
    for same in (x.detach().double(), z.to(torch.complex128), x.detach().bfloat16()):
        assert widen(same) is same
    (wx * torch.tensor([3.0, 5.0], dtype=F64)).sum().backward()
    assert x.grad.dtype == torch.float32 and torch.equal(x.grad, torch.tensor([3.0, 5.0]))


@pytest.mark.parametrize("dtype", [torch.float32, F64, torch.complex64, torch.complex128])
def test_series_coefficients_are_one_over_k_plus_one_factorial_in_the_asked_dtype_and_device(dtype):
    want = torch.tensor([1.0 / math.factorial(k + 1) for k in range(18)], dtype=F64)
    for device in ("cpu", "meta"):
        c = _series_coefficients(dtype, torch.device(device))
        assert c.dtype == dtype and c.device.type == device and c.shape == (18,)
    c = _series_coefficients(dtype, torch.device("cpu"))
    assert torch.equal(c, want.to(dtype))  # each 1/(k+1)! rounded once to dtype


def test_the_chunked_mimo_scan_trains_under_cpu_autocast():
    """Under autocast (bfloat16 on the CPU) the narrow weight products are plain ``a @ w``: forward and backward run,
    and B̄'s gradient matches the float64 reference's to bfloat16's precision."""
    g = torch.Generator().manual_seed(0)
    B, L, H, M = 2, 80, 4, 3  # B·L = 160 rows: two blocks of GRAM_BLOCK
    u = torch.randn(B, L, H, generator=g)
    A = (0.9 * torch.exp(1j * torch.rand(M, generator=g, dtype=F64))).to(torch.complex64)
    Bb = torch.randn(M, H, generator=g, dtype=torch.complex64).requires_grad_()
    C = torch.randn(H, M, generator=g, dtype=torch.complex64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = mimo_scan_chunked(u, A, Bb, C)
    y.float().sum().backward()
    B64 = Bb.detach().to(torch.complex128).requires_grad_()
    y64, _ = mimo_scan_reference(u.double(), A.to(torch.complex128), B64, C.to(torch.complex128))
    y64.sum().backward()
    assert rel_err_(Bb.grad, B64.grad) < 3e-2


def rel_err_(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().to(torch.complex128), b.detach().to(torch.complex128)
    return float((a - b).abs().max() / b.abs().max())


def test_the_chunked_mimo_scan_under_vmap_is_the_reference_per_sample():
    """Under torch.func.vmap (which cannot run ``_TallProduct``: no vmap rule) the products are plain ``a @ w``: the
    batched scan equals the float64 reference run sample by sample, B̄ requiring its gradient."""
    g = torch.Generator().manual_seed(0)
    B, L, H, M = 2, 80, 4, 3
    u = torch.randn(5, B, L, H, generator=g, dtype=F64)
    A = 0.9 * torch.exp(1j * torch.rand(M, generator=g, dtype=F64))
    Bb = torch.randn(M, H, generator=g, dtype=torch.complex128).requires_grad_()
    C = torch.randn(H, M, generator=g, dtype=torch.complex128)
    y = torch.func.vmap(lambda v: mimo_scan_chunked(v, A, Bb, C)[0])(u)
    want = torch.stack([mimo_scan_reference(v, A, Bb, C)[0] for v in u])
    assert rel_err_(y, want) < 1e-13
