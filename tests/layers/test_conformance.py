"""The public conformance checker, ``ssmkit.layers.check_layer``: it passes every registered layer (every variant of
tests/conftest.py, and the two-sided form of each layer that takes ``bidirectional``) and fails, naming the right
check, on toy layers that each break one rule of the protocol.

The toys are one small layer, :class:`Decay` (h_t = a ⊙ h_{t-1} + b ⊙ x_t, y_t = c ⊙ h_t + d ⊙ x_t per channel,
a = sigmoid(logit_a)), with every capability, and subclasses that each get one thing wrong. None is registered:
registering would add them to ``ssmkit.layers.available()`` for the rest of the session, and the tests
parametrised over it would check them.
"""

from __future__ import annotations

import functools
import inspect

import pytest
import torch
from torch import nn

import ssmkit.layers as layers
import ssmkit.ops as ops
from ssmkit.layers import Capabilities, SequenceLayer, TensorSpec
from ssmkit.layers.conformance import CHECKS, ConformanceError, check_layer
from tests.conftest import NEEDED_AT_TINY_WIDTH, H, variants

F64 = torch.float64

# S4-FouT keeps a mode with Re λ = -1e-4 (the official clamp of its zero real parts): its gradients through two chunks
# agree with the one pass to ~1e-7 (tests/layers/test_protocol.py allows 1e-5), not to 10 rtol = 1e-9.
GRAD_RTOL = {("s4", "fout"): 1e-5}


def _options(name: str, opts: dict) -> dict:
    return {**NEEDED_AT_TINY_WIDTH.get(name, {}), **opts}


def _takes_bidirectional(name: str) -> bool:
    return "bidirectional" in inspect.signature(layers.layer_class(name)).parameters


CASES = [pytest.param(name, opts, id=f"{name}-{i}") for name in layers.available()
         for i, opts in enumerate(variants(name))]
CASES += [pytest.param(name, {**variants(name)[0], "bidirectional": True}, id=f"{name}-bidirectional")
          for name in layers.available() if _takes_bidirectional(name)]


@pytest.mark.parametrize("name,opts", CASES)
def test_every_registered_layer_passes(name, opts):
    factory = functools.partial(layers.build, name, d_model=H, dtype=F64, **_options(name, opts))
    results = check_layer(factory, grad_rtol=GRAD_RTOL.get((name, opts.get("init"))))
    assert list(results) == list(CHECKS)
    layer = factory()
    ran = {check: outcome.startswith("passed") for check, outcome in results.items()}
    # each check ran where it applies, and was skipped (with the layer's own reason) where it does not
    assert ran["kernel"] == layer.supports("kernel") and ran["state_space"] == layer.supports("state_space")
    assert ran["step"] == layer.supports("step")
    assert ran["causality"] == ran["chunked"] == (not layer.bidirectional)
    for check in ("state_spec", "output", "purity", "batch", "gradients", "gradcheck"):
        assert ran[check], (check, results[check])
    if not layer.supports("kernel"):
        assert results["kernel"] == f"skipped: {layer.unsupported('kernel')}"


@pytest.mark.parametrize("name", layers.available())
def test_every_registered_layer_passes_in_float32(name):
    opts = variants(name)[0]
    results = check_layer(functools.partial(layers.build, name, d_model=H, **_options(name, opts)),
                          dtype=torch.float32, grad_rtol=GRAD_RTOL.get((name, opts.get("init"))))
    assert results["gradcheck"] == "skipped: gradcheck needs float64"
    assert results["output"] == "passed: max relative error 0 (tolerance 1e-05)"  # return_state=False: same y


@pytest.mark.parametrize("backend", ["auto", *layers.layer_class("s4d").backends])
def test_the_checker_runs_under_each_backend(backend):
    """The module docstring's advice: each backend a layer declares is checked by forcing it around the call."""
    with ops.use_backend(backend):
        results = check_layer(lambda: layers.build("s4d", d_model=H, d_state=6, dtype=F64))
    assert all(outcome.startswith("passed") for outcome in results.values()), results


# ---------------------------------------------------------------------------------------------------------------------
# The toys


class Decay(SequenceLayer):
    """h_t = a ⊙ h_{t-1} + b ⊙ x_t, y_t = c ⊙ h_t + d ⊙ x_t, a = sigmoid(logit_a): H real one-state systems."""

    capabilities = Capabilities(kernel=True, state_space=True, step=True)

    def __init__(self, d_model: int = H, dtype: torch.dtype = F64) -> None:
        super().__init__()
        self.d_model = d_model
        g = torch.Generator().manual_seed(3)
        for name in ("logit_a", "b", "c", "d"):
            self.register_parameter(name, nn.Parameter(torch.randn(d_model, generator=g, dtype=dtype)))

    def state_spec(self):
        return TensorSpec((self.d_model,), self.b.dtype)

    def _recur(self, x, h):
        """y (B, L, H) and the last h of the loop, from h (B, H)."""
        a, ys = torch.sigmoid(self.logit_a), []
        for t in range(x.shape[1]):
            h = a * h + self.b * x[:, t]
            ys.append(self.c * h + self.d * x[:, t])
        return torch.stack(ys, 1), h

    def _forward(self, x, state, return_state):
        h = x.new_zeros(x.shape[0], self.d_model) if state is None else state
        y, h = self._recur(x, h)
        return y, (h if return_state else None)

    def _step(self, x_t, state):
        h = torch.sigmoid(self.logit_a) * state + self.b * x_t
        return self.c * h + self.d * x_t, h

    def _taps(self, L):
        """c b a^l (H, L), without the skip."""
        a = torch.sigmoid(self.logit_a)
        return (self.c * self.b)[:, None] * a[:, None] ** torch.arange(L, dtype=a.dtype)

    def _kernel(self, L):
        K = self._taps(L)
        return torch.cat([K[:, :1] + self.d[:, None], K[:, 1:]], 1)  # the skip on tap 0

    def _state_space(self):
        from ssmkit.analysis import StateSpace

        a, b, c, d = (t.detach().double().reshape(-1, 1, 1).numpy() for t in
                      (torch.sigmoid(self.logit_a), self.b, self.c, self.d))
        return StateSpace(a, b, c * a, d + c * b, dt=1.0)  # control convention: C' = c a, D' = d + c b


class StepDrifts(Decay):
    def _step(self, x_t, state):
        h = (torch.sigmoid(self.logit_a) + 1e-4) * state + self.b * x_t  # a decay a little off forward's
        return self.c * h + self.d * x_t, h


class PeeksAtFuture(Decay):
    def _forward(self, x, state, return_state):
        y, h = super()._forward(x, state, return_state)
        return y + 0.1 * torch.cat([x[:, 1:], x[:, :1] * 0], 1), h  # y_t sees x_{t+1}


class IgnoresState(Decay):
    def _forward(self, x, state, return_state):
        return super()._forward(x, None, return_state)  # always from zero


class KernelWithoutSkip(Decay):
    def _kernel(self, L):
        return self._taps(L)  # D forgotten on tap 0


class MixesBatch(Decay):
    def _forward(self, x, state, return_state):
        y, h = super()._forward(x, state, return_state)
        return y + 0.1 * x.mean(0, keepdim=True), h  # every item sees the batch mean


class UnusedParameter(Decay):
    def __init__(self) -> None:
        super().__init__()
        self.e = nn.Parameter(torch.ones(self.d_model, dtype=F64))  # never read


class Float32State(Decay):
    def state_spec(self):
        return TensorSpec((self.d_model,), torch.float32)  # not the parameters' dtype


class CountsCalls(Decay):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=F64))

    def _forward(self, x, state, return_state):
        self.calls += 1  # forward writes a buffer
        return super()._forward(x, state, return_state)


class WrongBackward(Decay):
    class _Identity(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return 1.5 * g  # the identity's gradient is g

    def _forward(self, x, state, return_state):
        return super()._forward(self._Identity.apply(x), state, return_state)


class StateSpaceInPaperConvention(Decay):
    def _state_space(self):
        from ssmkit.analysis import StateSpace

        a, b, c, d = (t.detach().double().reshape(-1, 1, 1).numpy() for t in
                      (torch.sigmoid(self.logit_a), self.b, self.c, self.d))
        return StateSpace(a, b, c, d, dt=1.0)  # C and D not converted to the control convention


class ZeroInitialised(Decay):
    def __init__(self) -> None:
        super().__init__()
        with torch.no_grad():  # y = 0: every comparison of outputs would hold trivially
            self.c.zero_()
            self.d.zero_()


class NoWidth(Decay):
    def __init__(self) -> None:
        super().__init__()
        del self.d_model  # the protocol's H


class StepRaises(Decay):
    def _step(self, x_t, state):
        raise RuntimeError("not written yet")


class WrongMissingCapability(Decay):
    capabilities = Capabilities(kernel=False, state_space=True, step=True)

    def kernel(self, L):
        return None  # a missing capability must raise NotImplementedError


BROKEN = [
    (StepDrifts, "step", "stepping token by token differs from forward in y"),
    (PeeksAtFuture, "causality", "y before t0=1 changed when x changed from t0 on: the layer sees the future"),
    (IgnoresState, "chunked", r"forward\(x\[:, :1\]\) continued by forward\(x\[:, 1:\], state\) differs"),
    (KernelWithoutSkip, "kernel", "forward differs from the convolution with kernel"),
    (MixesBatch, "batch", "a NaN in batch item 0 reached item 1's output"),
    (UnusedParameter, "gradients", "parameter e gets no gradient"),
    (Float32State, "state_spec", r"state_spec\(\) is torch.float32 for a torch.float64 layer"),
    (CountsCalls, "purity", "calls changed during forward and backward"),
    (WrongBackward, "gradcheck", "gradcheck failed: Jacobian mismatch"),
    (StateSpaceInPaperConvention, "state_space", r"simulating state_space\(\) differs from forward"),
    (ZeroInitialised, "output", "y is zero for a random input"),
    (NoWidth, "output", r"d_model must be a positive int \(the input's H\); got None"),
    (StepRaises, "step", "it raised RuntimeError: not written yet"),
    (WrongMissingCapability, "kernel", r"the layer lacks kernel \(supports\(.kernel.\) is False\) but calling it "
                                       "returned"),
]


def test_the_toy_passes_every_check():
    results = check_layer(Decay())
    assert all(outcome.startswith("passed") for outcome in results.values()), results
    assert results["step"] == "passed: max relative error 0 (tolerance 1e-10)"  # the same loop: equal bits


@pytest.mark.parametrize("cls,check,message", BROKEN, ids=[c.__name__ for c, _, _ in BROKEN])
def test_a_broken_toy_fails_the_right_check(cls, check, message):
    with pytest.raises(ConformanceError, match=f"{cls.__name__} fails check '{check}': {message}") as info:
        check_layer(cls())
    assert info.value.check == check and isinstance(info.value, AssertionError)


def test_the_error_carries_the_measured_error_and_the_tolerance():
    with pytest.raises(ConformanceError) as info:
        check_layer(StepDrifts())
    err = info.value
    assert err.check == "step" and err.tolerance == 1e-10 and 1e-6 < err.error < 1e-2  # a 1e-4 drift of a ≈ 0.5
    assert f"(error {err.error:.3g} > 1e-10)" in str(err)
    with pytest.raises(ConformanceError) as info:
        check_layer(StepRaises())
    assert isinstance(info.value.__cause__, RuntimeError) and info.value.error is None


def test_a_drift_below_the_tolerance_passes_and_rtol_tightens_it():
    class TinyDrift(Decay):
        def _step(self, x_t, state):
            y, h = super()._step(x_t, state)
            return y * (1 + 1e-12), h

    assert check_layer(TinyDrift(), skip=CHECKS[:6])["step"].startswith("passed")
    with pytest.raises(ConformanceError, match="check 'step'"):
        check_layer(TinyDrift(), rtol=1e-13, skip=CHECKS[:6])


def test_float32_uses_its_tolerance_and_skips_gradcheck():
    results = check_layer(Decay(dtype=torch.float32), dtype=torch.float32)
    assert results["gradcheck"] == "skipped: gradcheck needs float64"
    assert results["step"].endswith("(tolerance 1e-05)")
    with pytest.raises(ConformanceError, match="check 'step'"):
        check_layer(StepDrifts(), dtype=torch.float32)  # 1e-4 on the decay is beyond float32's 1e-5 too


def test_the_callers_layer_is_left_alone():
    layer = layers.build("s4d", d_model=H, d_state=4, dtype=torch.float32)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    check_layer(layer, skip=("gradcheck",))
    assert layer.training and all(p.dtype == torch.float32 and p.grad is None for p in layer.parameters())
    assert all(torch.equal(v, before[k]) for k, v in layer.state_dict().items())


def test_skip_and_missing_capabilities_are_reported():
    class NoKernel(Decay):
        capabilities = Capabilities(kernel=False, state_space=False, step=True)
        missing = {"kernel": "it is a toy", "state_space": "it is a toy too"}

    results = check_layer(NoKernel(), skip=("gradcheck", "batch"))
    assert results["gradcheck"] == results["batch"] == "skipped: asked (skip)"
    assert results["kernel"] == "skipped: it is a toy" and results["state_space"] == "skipped: it is a toy too"


def test_bad_arguments_raise_value_errors_naming_what_was_expected():
    with pytest.raises(ValueError, match="dtype must be torch.float64 or torch.float32; got torch.float16"):
        check_layer(Decay(), dtype=torch.float16)
    with pytest.raises(ValueError, match="batch_size must be an int >= 2; got 1"):
        check_layer(Decay(), batch_size=1)
    with pytest.raises(ValueError, match="length must be an int >= 4; got 3"):
        check_layer(Decay(), length=3)
    with pytest.raises(ValueError, match=r"rtol must be a float in \(0, 1\) or None; got 0"):
        check_layer(Decay(), rtol=0)
    with pytest.raises(ValueError, match=r"grad_rtol must be a float in \(0, 1\) or None; got -1"):
        check_layer(Decay(), grad_rtol=-1)
    with pytest.raises(ValueError, match="seed must be an int; got 1.5"):
        check_layer(Decay(), seed=1.5)
    with pytest.raises(ValueError, match=r"skip must name checks from \('state_spec', .*\); got unknown \['steps'\]"):
        check_layer(Decay(), skip=("steps",))
    with pytest.raises(ValueError, match="skip must be a collection of check names"):
        check_layer(Decay(), skip="step")
    with pytest.raises(ValueError, match="layer must be a SequenceLayer or a callable returning one; got int"):
        check_layer(3)
    with pytest.raises(ValueError, match="layer must be a ssmkit.layers.SequenceLayer .*; got Linear"):
        check_layer(nn.Linear(H, H))
    with pytest.raises(ValueError, match="the factory returned Linear"):
        check_layer(lambda: nn.Linear(H, H))
