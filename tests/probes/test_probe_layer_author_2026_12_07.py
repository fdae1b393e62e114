"""Probe of 2026-12-07: an ML researcher writes their own sequence layer and asks ssmkit to take it, following README
"Writing your own layer", docs/design.md "The layer protocol" and the docstrings of ``ssmkit.layers.registry`` and
``ssmkit.layers.conformance``: register it, run ``check_layer`` on it, build it by name in a ``SequenceModel`` and in
a block pattern, train it with ``ssmkit.train.fit``, export its state space and its step (ONNX).

Then the same user gets the layer wrong on purpose, one rule at a time, and ``check_layer`` must name the broken
rule: a step that writes into the state it is given (passed before), a forward that does (reported as a batch
mix-up before), a forward that clamps its weights in place (passed before: the values did not move), a look-ahead at
an internal chunk's boundary (reported as a chunking error before), a look-ahead in training mode only (passed
before: the checks ran in eval mode), ``state=None`` that is not the zero state (passed before, for a layer without a
kernel or state space), and a ``state_space`` that returns the wrong kind of object.
And the registry's misuses: ``@register`` without its parentheses, a class that is not a layer, an illegal name, one
class under two names, a constructor the model cannot call, a notebook cell run twice, ``unregister``, and a
subclass of a shipped layer that went by its parent's name.

Every layer registered here is unregistered at the end of its test (tests elsewhere iterate the registry).
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import pytest
import torch
from torch import nn

import ssmkit
from ssmkit.layers import Capabilities, ConformanceError, SequenceLayer, TensorSpec, check_layer, register
from ssmkit.layers.conformance import CHECKS
from ssmkit.layers.registry import available, build, layer_class, unregister
from tests.conftest import run_steps

F64 = torch.float64
H = 3


class AuthorEMA(SequenceLayer):
    """The user's layer: h_t = a ⊙ h_{t-1} + (1 - a) ⊙ x_t, y_t = h_t + d ⊙ x_t, a = sigmoid(logit_a), H one-state
    systems (README's MyEMA, with its kernel and state space declared)."""

    capabilities = Capabilities(kernel=True, state_space=True, step=True)

    def __init__(self, d_model: int = H, device=None, dtype=None) -> None:
        super().__init__()
        self.d_model = d_model
        g = torch.Generator().manual_seed(7)
        self.logit_a = nn.Parameter(torch.randn(d_model, generator=g, dtype=F64).to(device, dtype or torch.float32))
        self.d = nn.Parameter(torch.randn(d_model, generator=g, dtype=F64).to(device, dtype or torch.float32))

    def state_spec(self):
        return TensorSpec((self.d_model,), self.d.dtype)

    def _forward(self, x, state, return_state):
        h = x.new_zeros(x.shape[0], self.d_model) if state is None else state
        ys = []
        for t in range(x.shape[1]):
            y_t, h = self._step(x[:, t], h)
            ys.append(y_t)
        return torch.stack(ys, 1), (h if return_state else None)

    def _step(self, x_t, state):
        a = torch.sigmoid(self.logit_a)
        h = a * state + (1 - a) * x_t
        return h + self.d * x_t, h

    def _kernel(self, L):
        a = torch.sigmoid(self.logit_a)
        K = (1 - a)[:, None] * a[:, None] ** torch.arange(L, dtype=a.dtype)  # (H, L): (1 - a) a^l
        return torch.cat([K[:, :1] + self.d[:, None], K[:, 1:]], 1)  # the skip d on tap 0

    def _state_space(self):
        from ssmkit.analysis import StateSpace

        a = torch.sigmoid(self.logit_a).detach().double().reshape(-1, 1, 1).numpy()
        d = self.d.detach().double().reshape(-1, 1, 1).numpy()
        return StateSpace(a, 1 - a, a, d + 1 - a, dt=1.0)  # control convention: C' = C a, D' = d + C (1 - a)


@contextlib.contextmanager
def registered(name: str, cls: type):
    """``register(name)(cls)`` for the duration of a ``with`` block, then ``unregister(name)``."""
    register(name)(cls)
    try:
        yield cls
    finally:
        if name in available():
            unregister(name)


def ema_loop(logit_a: torch.Tensor, d: torch.Tensor, x: torch.Tensor, h: torch.Tensor | None = None):
    """The layer's equation as a plain float64 loop: y (B, L, H) and the final h (B, H)."""
    a, d, x = torch.sigmoid(logit_a.double()), d.double(), x.double()
    h = torch.zeros(x.shape[0], x.shape[2], dtype=F64) if h is None else h.double()
    ys = []
    for t in range(x.shape[1]):
        h = a * h + (1 - a) * x[:, t]
        ys.append(h + d * x[:, t])
    return torch.stack(ys, 1), h


# ---------------------------------------------------------------------------------------------------------------------
# The right layer, as the docs say to use it


def test_the_authors_layer_passes_every_check_and_is_its_equation():
    with registered("probe_author_ema", AuthorEMA):
        layer = build("probe_author_ema", d_model=H, dtype=F64)
        assert type(layer) is AuthorEMA and layer.name == "probe_author_ema"
        report = check_layer(layer)
        assert list(report) == list(CHECKS) and all(v.startswith("passed") for v in report.values()), report
        x = torch.randn(2, 11, H, dtype=F64, generator=torch.Generator().manual_seed(1))
        h0 = torch.randn(2, H, dtype=F64, generator=torch.Generator().manual_seed(2))
        y, h = layer(x, h0)
        y_ref, h_ref = ema_loop(layer.logit_a.detach(), layer.d.detach(), x, h0)
        torch.testing.assert_close(y, y_ref, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(h, h_ref, rtol=1e-13, atol=1e-13)
    assert "probe_author_ema" not in available()


def test_its_exported_state_space_is_the_closed_form():
    layer = AuthorEMA(dtype=F64)
    ss = layer.state_space()
    a = torch.sigmoid(layer.logit_a.detach()).numpy()
    d = layer.d.detach().numpy()
    # x[k+1] = a x[k] + (1 - a) u[k], y[k] = a x[k] + (d + 1 - a) u[k], x[k] = h_{k-1}
    np.testing.assert_allclose(ss.A[:, 0, 0], a, rtol=1e-15)
    np.testing.assert_allclose(ss.B[:, 0, 0], 1 - a, rtol=1e-15)
    np.testing.assert_allclose(ss.C[:, 0, 0], a, rtol=1e-15)
    np.testing.assert_allclose(ss.D[:, 0, 0], d + 1 - a, rtol=1e-15)
    np.testing.assert_allclose(np.sort(np.asarray(ss.poles()).real.ravel()), np.sort(a), rtol=1e-14)


def test_registered_at_run_time_it_builds_by_name_in_a_model_and_in_a_pattern():
    from ssmkit.layers.checks import UnknownOptionError
    from ssmkit.models import SequenceModel

    with registered("probe_author_ema", AuthorEMA):
        torch.manual_seed(0)
        model = SequenceModel(d_input=2, d_model=H, n_layers=2, layer=["probe_author_ema", "s4d"], d_output=2,
                              head="regress", pool=None, layer_options={"s4d": {"d_state": 4}},
                              dtype=F64).eval()
        inner = model.blocks[0].layer
        assert type(inner) is AuthorEMA and inner.d.dtype == F64
        x = torch.randn(2, 9, 2, dtype=F64)
        with torch.no_grad():
            y, _ = model(x)
            stepped, _ = run_steps(model, x)
        torch.testing.assert_close(stepped, y, rtol=1e-10, atol=1e-12)
        with pytest.raises(UnknownOptionError, match=r"layer 'probe_author_ema' has no option\(s\) \['d_state'\]"):
            SequenceModel(d_input=2, d_model=H, n_layers=1, layer="probe_author_ema", d_output=2, head="regress",
                          pool=None, layer_options={"d_state": 4})
    with pytest.raises(ValueError, match=r"unknown layer names \['probe_author_ema'\] in the pattern; registered "
                                         "layers"):
        SequenceModel(d_input=2, d_model=H, n_layers=1, layer="probe_author_ema", d_output=2, head="regress",
                      pool=None)


def test_the_training_api_trains_it(tmp_path):
    from ssmkit.models import SequenceModel
    from ssmkit.models.config import SequenceModelConfig
    from ssmkit.train import TrainConfig, fit

    g = torch.Generator().manual_seed(3)
    X, Y = torch.randn(16, 8, 2, generator=g), torch.randn(16, 8, 1, generator=g)
    with registered("probe_author_ema", AuthorEMA):
        config = SequenceModelConfig(d_input=2, d_model=H, n_layers=1, layer="probe_author_ema", d_output=1,
                                     head="regress", pool=None)
        result = fit(config, TrainConfig(max_steps=2, batch_size=8, warmup_steps=0), (X, Y), None, (X, Y),
                     tmp_path, progress=False)
        model = SequenceModel(d_input=2, d_model=H, n_layers=1, layer="probe_author_ema", d_output=1,
                              head="regress", pool=None)
    assert result["steps"] == 2
    assert result["parameters"] == sum(p.numel() for p in model.parameters())
    assert np.isfinite(result["test_loss"]) and result["test_loss"] > 0


# ---------------------------------------------------------------------------------------------------------------------
# Wrong layers: check_layer names the rule each breaks


class StepWritesItsState(AuthorEMA):
    def _forward(self, x, state, return_state):
        h = x.new_zeros(x.shape[0], self.d_model) if state is None else state.clone()
        return AuthorEMA._forward(self, x, h, return_state)

    def _step(self, x_t, state):  # h updated in place to save memory: the caller's state moves too
        a = torch.sigmoid(self.logit_a)
        state.mul_(a).add_((1 - a) * x_t)
        return state + self.d * x_t, state


class ForwardWritesItsState(AuthorEMA):
    def _forward(self, x, state, return_state):
        h = x.new_zeros(x.shape[0], self.d_model) if state is None else state
        a, ys = torch.sigmoid(self.logit_a), []
        for t in range(x.shape[1]):
            h.mul_(a).add_((1 - a) * x[:, t])  # in place into the caller's state
            ys.append(h + self.d * x[:, t])
        return torch.stack(ys, 1), (h.clone() if return_state else None)


class ClampsWeightsInForward(AuthorEMA):
    def _forward(self, x, state, return_state):
        with torch.no_grad():
            self.logit_a.clamp_(-20.0, 20.0)  # a projection of the weights: no value moves at these weights
        return super()._forward(x, state, return_state)


class PeeksAcrossChunks(AuthorEMA):
    capabilities = Capabilities(kernel=False, state_space=False, step=True)

    def _forward(self, x, state, return_state):  # an internal chunk of 8 whose last output sees the next input
        y, h = super()._forward(x, state, return_state)
        ahead = torch.zeros_like(y)
        for t in range(7, x.shape[1] - 1, 8):
            ahead[:, t] = 0.1 * x[:, t + 1]
        return y + ahead, h


class NoneIsNotZero(AuthorEMA):
    capabilities = Capabilities(kernel=False, state_space=False, step=True)

    def _forward(self, x, state, return_state):  # state=None starts from ones, initial_state() gives zeros
        return super()._forward(x, x.new_ones(x.shape[0], self.d_model) if state is None else state, return_state)


class StateSpaceAsTuple(AuthorEMA):
    def _state_space(self):
        ss = super()._state_space()
        return ss.A, ss.B, ss.C, ss.D  # the matrices, not a StateSpace


class StateInAnotherBasis(AuthorEMA):
    """Carries s = 2h as its state, while its realisation's state is h: from zero all agree, but an exported graph
    started from the layer's state (onnx_state) continues it wrongly (the lead's addition)."""

    def _forward(self, x, state, return_state):
        h = x.new_zeros(x.shape[0], self.d_model) if state is None else state / 2
        ys = []
        for t in range(x.shape[1]):
            y_t, h = AuthorEMA._step(self, x[:, t], h)
            ys.append(y_t)
        return torch.stack(ys, 1), (2 * h if return_state else None)

    def _step(self, x_t, state):
        y_t, h = AuthorEMA._step(self, x_t, state / 2)
        return y_t, 2 * h


class StepWritesItsInput(AuthorEMA):
    def _forward(self, x, state, return_state):
        h = x.new_zeros(x.shape[0], self.d_model) if state is None else state
        a, ys = torch.sigmoid(self.logit_a), []
        for t in range(x.shape[1]):
            h = a * h + (1 - a) * x[:, t]
            ys.append(h + self.d * x[:, t])
        return torch.stack(ys, 1), (h if return_state else None)

    def _step(self, x_t, state):
        y, h = super()._step(x_t, state)
        x_t.zero_()  # scratch space
        return y, h


class LeaksWhileTraining(AuthorEMA):
    capabilities = Capabilities(kernel=False, state_space=False, step=True)

    def __init__(self, d_model: int = H, device=None, dtype=None) -> None:
        super().__init__(d_model, device, dtype)
        self.drop = nn.Dropout(0.25)

    def _forward(self, x, state, return_state):  # a "smoothing" term in training only: y_t sees x_{t+1} when trained
        y, h = super()._forward(x, state, return_state)
        if self.training:
            y = y + self.drop(torch.cat([x[:, 1:], x[:, -1:]], 1))
        return y, h


WRONG = [
    (StepWritesItsState, "step", r"step \(at t=0\) wrote into the state it was given \(state tensor 0\)"),
    (ForwardWritesItsState, "batch", r"forward wrote into the state it was given \(state tensor 0\)"),
    (ClampsWeightsInForward, "purity", "logit_a was written in place during forward and backward"),
    (PeeksAcrossChunks, "causality", "y before t0=8 changed when x changed from t0 on: the layer sees the future"),
    (NoneIsNotZero, "chunked", r"forward\(x, initial_state\(2\)\) differs from forward\(x\) in y: state=None must "
                               "mean the zero state"),
    (StateSpaceAsTuple, "state_space", r"state_space\(\) must return an ssmkit.analysis.StateSpace .*; got tuple"),
    (StepWritesItsInput, "step", "step wrote into its input x_t"),
    (StateInAnotherBasis, "state_space", r"stepping the real realisation of state_space\(\) from the layer's state "
                                         r"\(onnx_state's layout\) differs from forward\(x, state\)"),
    (LeaksWhileTraining, "causality", r"in training mode \(layer.train\(\)\), y before t0=1 changed when x changed "
                                      "from t0 on: the layer sees the future while it is trained"),
]


@pytest.mark.parametrize("cls,check,message", WRONG, ids=[c.__name__ for c, _, _ in WRONG])
def test_a_wrong_layer_fails_the_check_of_the_rule_it_breaks(cls, check, message):
    with pytest.raises(ConformanceError, match=f"{cls.__name__} fails check '{check}': {message}") as info:
        check_layer(functools.partial(cls, dtype=F64), skip=("gradcheck",))
    assert info.value.check == check


def test_a_wrong_layer_in_float32_is_caught_too():
    with pytest.raises(ConformanceError, match="StepWritesItsState fails check 'step'"):
        check_layer(StepWritesItsState(), dtype=torch.float32)


def test_dropout_in_training_mode_is_no_leak():
    """The training-mode causality check draws the same dropout masks for both calls: a causal layer with dropout
    passes it (and the layer's own RNG state is left as it was)."""

    class Dropped(AuthorEMA):
        def __init__(self, d_model: int = H, device=None, dtype=None) -> None:
            super().__init__(d_model, device, dtype)
            self.drop = nn.Dropout(0.5)

        def _forward(self, x, state, return_state):
            y, h = super()._forward(x, state, return_state)
            return (self.drop(y) if self.training else y), h

    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    report = check_layer(Dropped(dtype=F64), skip=("gradcheck",))
    assert report["causality"] == "passed: max relative leak 0 (tolerance 1e-12)"
    assert torch.equal(torch.rand(3), expected)  # the global generator is where it was


def test_an_unregistered_subclass_is_not_its_parent():
    """A researcher subclasses a shipped layer to try an idea: the subclass has no registry name of its own, so the
    layer-wise analysis names it by its class, not as the parent it changed."""
    from ssmkit.analysis.layerwise import analyze_layer

    class MyS4D(ssmkit.layers.S4D):
        pass

    layer = MyS4D(d_model=H, d_state=4, dtype=F64)
    assert MyS4D.name == "" and ssmkit.layers.S4D.name == "s4d" and layer_class("s4d") is ssmkit.layers.S4D
    assert analyze_layer("mine", layer, dt=1.0).layer == "MyS4D"
    assert analyze_layer("shipped", ssmkit.layers.S4D(d_model=H, d_state=4, dtype=F64), dt=1.0).layer == "s4d"


def test_a_layer_without_a_skip_passes_causality():
    """y_t = C h_{t-1} (a pure delay through the state, no feedthrough) is causal: its answer to x_{L-1} comes after
    the sequence, so the check asks for a response only at t0 = 1 and L/2."""

    class Delayed(AuthorEMA):
        capabilities = Capabilities(kernel=False, state_space=False, step=True)

        def _step(self, x_t, state):
            a = torch.sigmoid(self.logit_a)
            return self.d * state, a * state + (1 - a) * x_t

    report = check_layer(Delayed(dtype=F64), skip=("gradcheck",))
    assert report["causality"] == "passed: max relative leak 0 (tolerance 1e-12)"
    assert report["step"] == "passed: max relative error 0 (tolerance 1e-10)"


# ---------------------------------------------------------------------------------------------------------------------
# The registry


def test_register_without_parentheses_says_how_to_write_it():
    with pytest.raises(ValueError, match=r'register takes the layer\'s name, not the class: write @register\("my_name"\) '
                                         "above class AuthorEMA"):
        register(AuthorEMA)


def test_register_refuses_what_is_not_a_layer_and_leaves_it_alone():
    with pytest.raises(ValueError, match=r"register\('probe_linear'\) takes a subclass of "
                                         "ssmkit.layers.SequenceLayer; got Linear"):
        register("probe_linear")(nn.Linear)
    assert "probe_linear" not in available() and not hasattr(nn.Linear, "name")


@pytest.mark.parametrize("name", ["", "my ema", "my,ema", 3])
def test_register_refuses_a_name_the_command_line_cannot_take(name):
    with pytest.raises(ValueError, match=f"a layer name must be a non-empty str of letters, digits.*; got {name!r}"):
        register(name)


def test_a_name_clash_names_both_classes_and_the_way_out():
    class S4D(AuthorEMA):  # the user's own class of the same name as a shipped one
        pass

    with pytest.raises(ValueError, match=r"layer name 's4d' is already registered by ssmkit.layers.s4d.S4D; pick "
                                         r"another name for .*S4D \(or unregister\('s4d'\) first\)"):
        register("s4d")(S4D)
    assert layer_class("s4d") is ssmkit.layers.S4D and ssmkit.layers.S4D.name == "s4d"


def test_one_class_has_one_name():
    with registered("probe_author_ema", AuthorEMA):
        with pytest.raises(ValueError, match="AuthorEMA is already registered as 'probe_author_ema': a class has one "
                                             "name"):
            register("probe_author_ema_2")(AuthorEMA)
        assert build("probe_author_ema").name == "probe_author_ema" and "probe_author_ema_2" not in available()
        register("probe_author_ema")(AuthorEMA)  # the same class under its own name again: nothing to do


def test_a_constructor_the_model_cannot_call_is_refused_at_registration():
    class NoDtype(AuthorEMA):
        def __init__(self, d_model: int = H) -> None:
            super().__init__(d_model)

    with pytest.raises(ValueError, match=r"register\('probe_no_dtype'\): .*NoDtype's constructor must take d_model, "
                                         r"device, dtype .*; it lacks \['device', 'dtype'\]"):
        register("probe_no_dtype")(NoDtype)
    assert "probe_no_dtype" not in available()


def test_a_notebook_cell_run_twice_replaces_its_class():
    source = '''
import torch
from ssmkit.layers import register

@register("probe_author_cell")
class Cell(AuthorEMA):
    scale = SCALE

    def _forward(self, x, state, return_state):
        y, h = super()._forward(x, state, return_state)
        return self.scale * y, h
'''
    namespace = {"__name__": "__main__", "AuthorEMA": AuthorEMA}
    try:
        exec(compile(source.replace("SCALE", "1.0"), "<cell>", "exec"), dict(namespace))
        exec(compile(source.replace("SCALE", "2.0"), "<cell>", "exec"), dict(namespace))  # the cell, edited, run again
        layer = build("probe_author_cell", dtype=F64)
        assert layer.scale == 2.0
        x = torch.randn(1, 4, H, dtype=F64)
        torch.testing.assert_close(layer(x)[0], 2 * ema_loop(layer.logit_a.detach(), layer.d.detach(), x)[0],
                                   rtol=1e-13, atol=1e-13)
    finally:
        if "probe_author_cell" in available():
            unregister("probe_author_cell")


def test_unregister_takes_the_name_out_and_frees_the_class():
    register("probe_author_ema")(AuthorEMA)
    assert unregister("probe_author_ema") is AuthorEMA
    assert "probe_author_ema" not in available() and AuthorEMA.name == ""
    with pytest.raises(ValueError, match=r"unknown layer 'probe_author_ema'; available layers: \['attention'.*\] \(a "
                                         r"layer of your own is registered when the module defining it is imported: "
                                         r"import it first; on the command line, ssmkit --import MODULE ...\)"):
        build("probe_author_ema")  # e.g. a run's model.json read in a new process that did not import the module
    with pytest.raises(ValueError, match="unknown layer 'probe_author_ema'"):
        unregister("probe_author_ema")
    with registered("probe_author_ema_b", AuthorEMA):  # free for another name now
        assert build("probe_author_ema_b").name == "probe_author_ema_b"
