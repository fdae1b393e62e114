"""Bad input gets a clear ValueError naming what was expected, for every registered layer (constructor options,
inputs, states, batch sizes, devices, dtypes)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

import ssmkit.layers as layers
from tests.conftest import DEVICE, H, make_layer, state_map, variants

NAMES = layers.available()


def options_of(name: str) -> set[str]:
    return set(inspect.signature(layers.layer_class(name)).parameters)


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_raise_clear_errors(name):
    layer = make_layer(name)
    with pytest.raises(ValueError, match=r"\(B, L, H\)"):
        layer(torch.randn(5, H, dtype=torch.float64, device=DEVICE))
    with pytest.raises(ValueError, match=rf"\(B, L, {H}\)"):
        layer(torch.randn(2, 5, H + 1, dtype=torch.float64, device=DEVICE))
    with pytest.raises(ValueError, match="length L >= 1"):
        layer(torch.randn(2, 0, H, dtype=torch.float64, device=DEVICE))
    with pytest.raises(ValueError, match="batch size B >= 1"):
        layer(torch.randn(0, 5, H, dtype=torch.float64, device=DEVICE))
    with pytest.raises(ValueError, match="floating-point"):
        layer(torch.ones(2, 5, H, dtype=torch.int64, device=DEVICE))
    bad_state = torch.zeros(3, 1, dtype=torch.complex128, device=DEVICE)
    with pytest.raises(ValueError, match=r"as initial_state\(2\)"):
        layer(torch.randn(2, 5, H, dtype=torch.float64, device=DEVICE), bad_state)
    with pytest.raises(ValueError, match=rf"\(B, {H}\)"):
        layer.step(torch.randn(2, H + 2, dtype=torch.float64, device=DEVICE), layer.initial_state(2))
    with pytest.raises(ValueError, match=rf"\(B, {H}\)"):
        layer.step(torch.randn(0, H, dtype=torch.float64, device=DEVICE), layer.initial_state(1))
    with pytest.raises(TypeError):
        layers.build(name, d_model=H, no_such_option=1)
    with pytest.raises(TypeError):
        layer(torch.randn(2, 5, H, dtype=torch.float64, device=DEVICE), stat=None)  # a misspelt argument: not absorbed


@pytest.mark.parametrize("name", NAMES)
def test_initial_state_needs_a_positive_int(name):
    layer = make_layer(name)
    for bad in (-1, 0, 2.0, True, "2"):
        with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
            layer.initial_state(bad)


@pytest.mark.parametrize("name", NAMES)
def test_state_on_another_device_is_named(name):
    layer = make_layer(name)
    x = torch.randn(2, 5, H, device=DEVICE, dtype=torch.float64)
    elsewhere = state_map(lambda t: t.to("meta"), layer.initial_state(2))  # any device but the layer's
    with pytest.raises(ValueError, match="must be on the layer's device"):
        layer(x, elsewhere)
    with pytest.raises(ValueError, match="must be on the layer's device"):
        layer.step(x[:, 0], elsewhere)


@pytest.mark.parametrize("name", NAMES)
def test_input_on_another_device_is_named(name):
    # an input on another device than the parameters raised a RuntimeError from deep inside (autocast's "unknown
    # device type", a matmul's device mismatch), not a ValueError naming the layer's device
    layer = make_layer(name)
    x = torch.randn(2, 5, H, device="meta", dtype=torch.float64)  # any device but the layer's
    with pytest.raises(ValueError, match=rf"x must be on the layer's device {layer.state_device()}; got meta"):
        layer(x)
    with pytest.raises(ValueError, match=rf"x_t must be on the layer's device {layer.state_device()}; got meta"):
        layer.step(x[:, 0], layer.initial_state(2))


@pytest.mark.parametrize("name", NAMES)
def test_forward_on_the_meta_device_says_to_initialise_first(name):
    # a meta layer (deferred initialisation) given a meta input failed inside autocast ("unknown device type")
    layer = layers.build(name, d_model=H, device="meta", **variants(name)[0])
    x = torch.randn(2, 5, H, device="meta")
    with pytest.raises(ValueError, match=r"not on 'meta'.*to_empty\(device=...\) and reset_parameters\(\)"):
        layer(x)
    if layer.supports("step"):
        with pytest.raises(ValueError, match="not on 'meta'"):
            layer.step(x[:, 0], layer.initial_state(2))
    # kernel and state_space failed in autocast's dispatch ("unknown device type for autocast")
    for capability, read in (("kernel", lambda: layer.kernel(7)), ("state_space", layer.state_space)):
        if layer.supports(capability):
            with pytest.raises(ValueError, match=r"not on 'meta'.*to_empty"):
                read()


@pytest.mark.parametrize("name", NAMES)
def test_half_precision_parameters_are_refused(name):
    # .to(torch.bfloat16) after construction made 10 layers fail deep inside (complex bfloat16 is not a dtype) and
    # 6 run their SSM core in bfloat16; the protocol keeps float32/float64 parameters (autocast for bf16 compute)
    for dtype in (torch.bfloat16, torch.float16):
        layer = make_layer(name).to(dtype)
        x = torch.randn(2, 5, H, device=DEVICE, dtype=dtype)
        with pytest.raises(ValueError, match=rf"parameters are {dtype}, but ssmkit layers keep float32 or float64"):
            layer(x)
        if layer.supports("step"):
            with pytest.raises(ValueError, match=rf"parameters are {dtype}"):
                layer.step(x[:, 0], layer.initial_state(2))


@pytest.mark.parametrize("name", NAMES)
def test_constructor_options_are_validated(name):
    opts = options_of(name)
    base = variants(name)[0]
    with pytest.raises(ValueError, match="d_model must be a positive int"):
        layers.build(name, **{**base, "d_model": 0})
    if "lr" in opts:
        for bad in (-1e-3, math.nan, math.inf):
            with pytest.raises(ValueError, match="lr must be a finite float >= 0"):
                layers.build(name, d_model=H, **{**base, "lr": bad})
    if "dt_min" in opts:
        for dt_min, dt_max in ((math.nan, 0.1), (1e-3, math.inf), (0.0, 0.1), (0.1, 0.01)):
            with pytest.raises(ValueError, match="dt_m"):
                layers.build(name, d_model=H, **{**base, "dt_min": dt_min, "dt_max": dt_max})
    if "init" in opts:
        with pytest.raises(ValueError, match="init must be one of"):
            layers.build(name, d_model=H, **{**base, "init": "no-such-init"})
    if "d_state" in opts:
        with pytest.raises(ValueError, match="d_state must be"):
            layers.build(name, d_model=H, **{**base, "d_state": 0})


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.complex64, torch.int32])
@pytest.mark.parametrize("name", NAMES)
def test_unsupported_parameter_dtype_points_to_autocast(name, dtype):
    with pytest.raises(ValueError, match="dtype must be torch.float32 or torch.float64.*autocast"):
        layers.build(name, d_model=H, dtype=dtype)


def test_unknown_layer_name():
    with pytest.raises(ValueError, match="available layers"):
        layers.build("no-such-layer", d_model=4)


@pytest.mark.parametrize("name", NAMES)
def test_jit_trace_raises_instead_of_freezing_the_length(name):
    layer = make_layer(name)
    x = torch.randn(1, 10, H, device=DEVICE, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="torch.jit.trace is not supported"):
        torch.jit.trace(lambda inp: layer(inp)[0], (x,))


def test_an_option_is_read_as_a_plain_attribute_so_dynamo_traces_no_descriptor():
    """FixedOption and AssignableOption guard assignments (``__set__``, ``__delete__``) and define no ``__get__``: a
    read finds the value in the instance's ``__dict__``, the class gives the descriptor. Their ``__get__`` returned
    ``obj.__dict__[name]``, which torch 2.11's dynamo reads back as ``obj.name`` -- the descriptor again -- so every
    compiled layer failed with "maximum recursion depth exceeded" on the GPU machine's torch (GPU versions check of
    2026-12-05; torch 2.13 compiled it). The compiled module below reads both kinds and follows an assignment."""
    from ssmkit.layers.checks import SHAPES, AssignableOption, FixedOption, check_positive_int

    assert all(not hasattr(kind, "__get__") for kind in (FixedOption, AssignableOption))

    class Scaled(torch.nn.Module):
        width = FixedOption(SHAPES)
        chunk = AssignableOption(check_positive_int)

        def __init__(self) -> None:
            super().__init__()
            self.width, self.chunk = 3, 2

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.width + self.chunk

    module = Scaled()
    assert isinstance(Scaled.width, FixedOption) and isinstance(Scaled.chunk, AssignableOption)
    assert (module.width, module.chunk) == (3, 2) and vars(module)["width"] == 3 and vars(module)["chunk"] == 2
    with pytest.raises(AttributeError, match="width is fixed at construction"):
        module.width = 4
    with pytest.raises(ValueError, match="chunk must be a positive int"):
        module.chunk = 0
    x = torch.arange(4.0, dtype=torch.float64)
    compiled = torch.compile(module, fullgraph=True, backend="eager")
    assert torch.equal(compiled(x), x * 3 + 2)
    module.chunk = 5
    assert torch.equal(compiled(x), x * 3 + 5)


@pytest.mark.parametrize("tokens", [False, True])
def test_a_model_on_the_meta_device_says_to_initialise_first(tokens):
    # a meta SequenceModel failed in its blocks' autocast query ("unknown device type for autocast") before any layer
    # could say what to do
    from ssmkit.models import SequenceModel

    options = dict(d_input=1, vocab_size=7, head="lm", pool=None, d_output=7) if tokens else dict(d_input=3, d_output=2)
    model = SequenceModel(d_model=H, n_layers=2, layer="s4d", device="meta", **options)
    x = (torch.zeros(2, 5, dtype=torch.long, device="meta") if tokens else torch.zeros(2, 5, 3, device="meta"))
    with pytest.raises(ValueError, match=r"not on 'meta'.*to_empty\(device=...\)"):
        model(x)
    with pytest.raises(ValueError, match=r"not on 'meta'.*to_empty\(device=...\)"):
        model.step(x[:, 0], model.initial_state(2))
