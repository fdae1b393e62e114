"""Device hygiene of every layer, checked on the CPU with the ``meta`` device: no compute path creates a tensor on the
CPU (``torch.arange(L)``, ``torch.tensor(x)``, ``torch.zeros(...)`` without ``device=``, a numpy round trip, a cached CPU
buffer) that then meets the inputs' device -- the CUDA-only "Expected all tensors to be on the same device" bug, which
no CPU test sees.

A layer, model or DeepWiener is built on ``meta`` and run there (forward with and without a given state and
``return_state``, backward, step, ``intervals=``, ``kernel(L)``, bidirectional where offered) under each backend that
can run on meta ("auto", "reference", "chunked", "fft"; "native" and "triton" are real-device kernels). Two detectors:
PyTorch's own device check, which meta runs for most ops, and :class:`CrossDevice`, a ``TorchFunctionMode`` that
records every torch call whose tensor arguments mix meta and CPU tensors -- it also covers the ops whose meta kernels
skip the check (``einsum``, ``linear``, ``conv1d``, ``index_select``, ``gather``: tested below).

Layers refuse meta on purpose (``SequenceLayer._check_placement`` and ``_refuse_meta``: meta only defers
initialisation), and a few checks read values, which meta tensors do not have; the fixture :func:`meta_allowed` lifts
exactly those for the test: the refusals, autocast's query (no autocast for meta), the value checks of intervals,
lengths, token ids and DLR's unit modes, the step caches' ``torch.equal`` comparison (always recompute), and Mega's
read of its padding mask's lengths (given the lengths the test passed). Everything else runs as is.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.overrides import TorchFunctionMode

import ssmkit.layers.cache as layer_cache
import ssmkit.layers.dlr as dlr_module
import ssmkit.layers.mega as mega_module
import ssmkit.models.sequence as sequence_module
import ssmkit.ops.irregular as irregular_ops
from ssmkit import ops
from ssmkit.layers import SequenceLayer, TensorSpec, available, build, layer_class
from ssmkit.models import SequenceModel
from ssmkit.ops.native.gate import prefer_native
from ssmkit.sysid import DeepWiener
from tests.conftest import NEEDED_AT_TINY_WIDTH, H, variants

META = torch.device("meta")
B, T = 2, 9
META_BACKENDS = ("auto", "reference", "chunked", "fft")  # "native", "triton": kernels on real tensors only
# calls that legitimately take tensors of two devices (a copy, indexing with a CPU index, a shape read)
_CROSS_DEVICE_OK = {"to", "copy_", "__getitem__", "__setitem__", "tensor", "as_tensor", "expand_as", "__get__",
                    "__set__", "__repr__", "__format__"}


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


class CrossDevice(TorchFunctionMode):
    """Records (function name) for every torch call whose tensor arguments mix meta tensors and CPU tensors of one
    or more dimensions. A 0-dim CPU tensor is a scalar that CUDA's elementwise kernels take as an argument (no copy,
    no synchronisation): LiquidS4's float64 ``"lecun"`` contraction multiplies by two on purpose (layers/liquid.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name not in _CROSS_DEVICE_OK:
            devices = {t.device.type for t in _tensors((args, kwargs)) if t.dim() > 0 or t.device.type != "cpu"}
            if {"meta", "cpu"} <= devices:
                self.found.append(name)
        return func(*args, **kwargs)


@pytest.fixture
def meta_allowed(monkeypatch):
    """Let layers run on meta for this test (see the module docstring for what is lifted and why)."""

    def placement(self, x, name):
        device = self.state_device()
        if x.device != device:
            raise ValueError(f"{name} must be on the layer's device {device}; got {x.device}")
        self._check_parameter_dtype()
        return device

    autocast_enabled = torch.is_autocast_enabled
    finite = irregular_ops._finite_and_positive
    unit_mode = dlr_module.check_no_unit_mode
    same = layer_cache._same
    monkeypatch.setattr(SequenceLayer, "_check_placement", placement)
    monkeypatch.setattr(SequenceLayer, "_refuse_meta", lambda self, device: None)  # kernel's and state_space's
    monkeypatch.setattr(torch, "is_autocast_enabled",
                        lambda *a: False if a and a[0] == "meta" else autocast_enabled(*a))
    monkeypatch.setattr(irregular_ops, "_finite_and_positive", lambda t: t.device.type == "meta" or finite(t))
    monkeypatch.setattr(dlr_module, "check_no_unit_mode",
                        lambda z, layer: None if z.device.type == "meta" else unit_mode(z, layer))
    monkeypatch.setattr(layer_cache, "_same",
                        lambda old, new: False if any(t.device.type == "meta" for t in new) else same(old, new))
    monkeypatch.setattr(sequence_module, "tracing", lambda: True)  # skips only the token-id and lengths value checks
    known: dict[int, list[int]] = {}  # batch size -> the lengths the test passed (a meta mask has no values)
    lengths_of = mega_module.padding_lengths

    def padding_lengths(mask):
        return (known[mask.shape[0]], True) if mask.device.type == "meta" else lengths_of(mask)

    monkeypatch.setattr(mega_module, "padding_lengths", padding_lengths)
    return known


def _options(name: str, **extra) -> dict:
    return {**NEEDED_AT_TINY_WIDTH.get(name, {}), **variants(name)[0], **extra}


def _on_meta(t: torch.Tensor, shape: tuple, dtype: torch.dtype = torch.float32) -> None:
    assert t.device == META and tuple(t.shape) == shape and t.dtype == dtype, (t.device, tuple(t.shape), t.dtype)


def _state_on_meta(state) -> None:
    for t in _tensors(state):
        assert t.device == META


def _spec_leaves(spec) -> list[TensorSpec]:
    return [spec] if isinstance(spec, TensorSpec) else [leaf for s in spec for leaf in _spec_leaves(s)]


def _layer_cases() -> list:
    cases = []
    for name in available():
        cls = layer_class(name)
        for backend in META_BACKENDS:
            if backend != "auto" and backend not in cls.backends:
                continue
            for bidirectional in ((False, True) if cls.anticausal else (False,)):
                cases.append(pytest.param(name, backend, bidirectional,
                                          id=f"{name}-{backend}{'-bidirectional' if bidirectional else ''}"))
    return cases


@pytest.mark.parametrize("name, backend, bidirectional", _layer_cases())
def test_layer_runs_on_meta_without_cpu_tensors(meta_allowed, name, backend, bidirectional):
    torch.manual_seed(0)
    extra = {"bidirectional": True} if bidirectional else {}
    layer = build(name, d_model=H, device=META, dtype=torch.float32, **_options(name, **extra))
    cls = type(layer)
    x = torch.randn(B, T, H, device=META)
    watch = CrossDevice()
    with ops.use_backend(backend), watch:
        y, h = layer(x)
        _on_meta(y, (B, T, H))
        assert (h is None) == bidirectional
        y, h = layer(x, return_state=False)
        _on_meta(y, (B, T, H))
        assert h is None
        xg = torch.randn(B, T, H, device=META, requires_grad=True)
        layer(xg)[0].sum().backward()
        _on_meta(xg.grad, (B, T, H))
        assert all(p.grad is None or p.grad.device == META for p in layer.parameters())
        if not bidirectional:
            _state_on_meta(h0 := layer.initial_state(B))
            y, h = layer(x, state=h0)
            _on_meta(y, (B, T, H))
            _state_on_meta(h)
            with torch.no_grad():  # the inference step (cached discretisation; the fused C kernels are not taken)
                y_t, h = layer.step(x[:, 0], h)
                y_t, h = layer.step(x[:, 1], h)
            _on_meta(y_t, (B, H))
            _state_on_meta(h)
            y_t, h = layer.step(x[:, 2], h)  # the differentiable step
            y_t.sum().backward()
            _on_meta(y_t, (B, H))
        if cls.takes_intervals and not bidirectional:
            intervals = torch.rand(B, T, device=META)
            if backend == "fft":  # the irregular scans have no FFT path: a clean refusal, never a silent fallback
                with pytest.raises(RuntimeError, match="backend 'fft'"):
                    layer(x, intervals=intervals)
            else:
                xg = torch.randn(B, T, H, device=META, requires_grad=True)
                y, h = layer(xg, intervals=intervals)
                y.sum().backward()
                _on_meta(y, (B, T, H))
                _state_on_meta(h)
                y_t, _ = layer.step(x[:, 0], h, interval=torch.rand(B, device=META))
                _on_meta(y_t, (B, H))
        if layer.supports("kernel"):
            K = layer.kernel(T)
            assert K.device == META and K.shape[-1] == T
    assert watch.found == [], f"torch calls mixing meta and CPU tensors: {sorted(set(watch.found))}"


@pytest.mark.parametrize("name, options", [pytest.param(n, v, id=f"{n}-{i}") for n in available()
                                           for i, v in enumerate(variants(n)) if i > 0])
def test_every_variant_runs_on_meta_without_cpu_tensors(meta_allowed, name, options):
    """The tests' other option sets (inits, discretisations, heads, groups, ...) under "auto", in float64: forward,
    backward and step."""
    torch.manual_seed(0)
    layer = build(name, d_model=H, device=META, dtype=torch.float64, **{**NEEDED_AT_TINY_WIDTH.get(name, {}), **options})
    watch = CrossDevice()
    with watch:
        x = torch.randn(B, T, H, device=META, dtype=torch.float64, requires_grad=True)
        y, h = layer(x)
        y.sum().backward()
        _on_meta(y, (B, T, H), torch.float64)
        _on_meta(x.grad, (B, T, H), torch.float64)
        if layer.supports("step"):
            y_t, h = layer.step(x[:, 0].detach(), h)
            _on_meta(y_t, (B, H), torch.float64)
            _state_on_meta(h)
    assert watch.found == [], f"torch calls mixing meta and CPU tensors: {sorted(set(watch.found))}"


@pytest.mark.parametrize("name", available())
def test_models_run_on_meta_without_cpu_tensors(meta_allowed, name):
    cls = layer_class(name)
    options = _options(name)
    lengths = torch.tensor([T, 4], device=META)
    meta_allowed.update({B: [T, 4], 2 * B: [T, 3, 5, T]})  # what Mega's bidirectional mask path reads
    watch = CrossDevice()
    with watch:
        real = SequenceModel(3, H, 2, name, layer_options=options, d_output=5, pool="mean", device=META)
        x = torch.randn(B, T, 3, device=META)
        out, states = real(x, lengths=lengths)
        out.sum().backward()
        _on_meta(out, (B, 5))
        out, states = real(x, state=real.initial_state(B))
        _state_on_meta(states)
        if cls.capabilities.step:
            out_t, states = real.step(x[:, 0], states)
            _on_meta(out_t, (B, 5))
        tokens = SequenceModel(1, H, 2, name, layer_options=options, d_output=7, pool="last", vocab_size=11,
                               device=META)
        out, _ = tokens(torch.randint(0, 11, (B, T), device=META), lengths=lengths)
        _on_meta(out, (B, 7))
        pair = SequenceModel(1, H, 1, name, layer_options=options, d_output=3, vocab_size=11, pair=True, device=META)
        out, _ = pair(torch.randint(0, 11, (B, 2, T), device=META), lengths=torch.tensor([[T, 3], [5, T]], device=META))
        out.sum().backward()
        _on_meta(out, (B, 3))
        both = {"bidirectional": True} if cls.anticausal else {}
        per_step = SequenceModel(3, H, 1, name, layer_options=_options(name, **both), d_output=2, pool=None,
                                 device=META)
        out, _ = per_step(x, lengths=lengths)
        _on_meta(out, (B, T, 2))
        if cls.takes_intervals:
            out, _ = real(x, intervals=torch.rand(B, T, device=META))
            _on_meta(out, (B, 5))
    assert watch.found == [], f"torch calls mixing meta and CPU tensors: {sorted(set(watch.found))}"


@pytest.mark.parametrize("name", available())
def test_deep_wiener_runs_on_meta_without_cpu_tensors(meta_allowed, name):
    cls = layer_class(name)
    if not cls.capabilities.step:
        pytest.skip(f"DeepWiener steps its layers one sample at a time; {name} has no step")
    spec = build(name, d_model=H, device=META, **_options(name)).state_spec()
    if any(leaf.growing is not None for leaf in _spec_leaves(spec)):
        pytest.skip(f"DeepWiener needs a fixed-size state; {name}'s grows (a clean ValueError at construction)")
    watch = CrossDevice()
    with watch:
        wiener = DeepWiener(2, 3, d_model=H, n_layers=2, layer=name, layer_options=_options(name),
                            time_varying=not cls.capabilities.state_space, device=META)
        y, states = wiener(torch.randn(B, T, 2, device=META))
        y.sum().backward()
        if cls.takes_intervals:
            y, states = wiener(torch.randn(B, T, 2, device=META), intervals=torch.rand(B, T, device=META))
        _on_meta(y, (B, T, 3))
        _state_on_meta(states)
        y_t, states = wiener.step(torch.randn(B, 2, device=META), states)
        _on_meta(y_t, (B, 3))
    assert watch.found == [], f"torch calls mixing meta and CPU tensors: {sorted(set(watch.found))}"


def test_the_detectors_catch_a_cpu_tensor_in_a_forward(meta_allowed, monkeypatch):
    """A planted bug (a CPU ``torch.arange`` added to a layer's output) is caught by both detectors; and the ops whose
    meta kernels skip PyTorch's device check are caught by :class:`CrossDevice`."""
    name = available()[0]
    layer = build(name, d_model=H, device=META, **_options(name))
    forward = type(layer)._forward

    def planted(self, x, state, return_state):
        y, h = forward(self, x, state, return_state)
        return y + torch.arange(x.shape[1], dtype=y.dtype)[:, None], h

    monkeypatch.setattr(type(layer), "_forward", planted)
    with pytest.raises(RuntimeError, match="device"):
        layer(torch.randn(B, T, H, device=META))
    watch = CrossDevice()
    m, c = torch.zeros(5, device=META), torch.arange(5.0)
    with watch:
        torch.einsum("i,i->", m, c)
        torch.nn.functional.linear(torch.zeros(2, 5, device=META), torch.ones(3, 5))
        torch.nn.functional.conv1d(torch.zeros(1, 1, 5, device=META), torch.ones(1, 1, 2))
        m.index_select(0, torch.tensor([0, 1]))
        m.gather(0, torch.tensor([0, 1]))
        m[torch.tensor([0, 1])]  # indexing with a CPU index is allowed on CUDA too: not recorded
        m * torch.tensor(2.0)  # a 0-dim CPU scalar: allowed on CUDA too, not recorded
        with pytest.raises(RuntimeError, match="device"):  # a 1-element CPU tensor is no scalar: the meta kernel
            m * torch.tensor([2.0])  # raises, and CrossDevice records it
    assert watch.found == ["einsum", "linear", "conv1d", "index_select", "gather", "mul"]


def test_meta_is_refused_without_the_fixture_and_the_native_gate_is_not_taken():
    name = available()[0]
    layer = build(name, d_model=H, device=META, **_options(name))
    with pytest.raises(ValueError, match="runs on a real device, not on 'meta'"):
        layer(torch.randn(B, T, H, device=META))
    x = torch.randn(B, T, H, device=META)
    assert not prefer_native("selective_scan", x) and not prefer_native("ssm_scan", x)


@pytest.mark.parametrize("name", [n for n in available() if "native" in layer_class(n).backends])
def test_a_forced_native_backend_refuses_meta_by_name(meta_allowed, name):
    """The C kernels read real CPU memory: forced on another device they raise, naming the op and the device (what a
    CUDA input gets too); under "auto" (the tests above) they are simply not taken."""
    layer = build(name, d_model=H, device=META, **_options(name))
    with ops.use_backend("native"), pytest.raises(RuntimeError, match=r"backend 'native' .*runs on the CPU; .* on meta"):
        layer(torch.randn(B, T, H, device=META))


def _outputs_on_cpu(name: str, options: dict, backend: str, block: bool) -> list[torch.Tensor]:
    """forward (with a given state), backward and two steps of layer ``name`` on CPU tensors, optionally inside a
    ``with torch.device("meta")`` block: the outputs, the final state, the input's and parameters' gradients, the
    steps' outputs and states."""
    torch.manual_seed(0)
    layer = build(name, d_model=H, **options).double()
    x = torch.randn(B, T, H, dtype=torch.float64, requires_grad=True)
    outs = []
    with ops.use_backend(backend), (torch.device("meta") if block else contextlib.nullcontext()):
        _, h0 = layer(x[:, :3].detach())
        y, h = layer(x, h0)
        y.square().sum().backward()
        outs += [y.detach(), *_tensors(h), x.grad, *(p.grad for p in layer.parameters() if p.grad is not None)]
        if layer.supports("step"):
            with torch.no_grad():
                state = layer.initial_state(B)
                for t in range(2):
                    y_t, state = layer.step(x[:, t].detach(), state)
                    outs += [y_t, *_tensors(state)]
    return outs


def _block_cases() -> list:
    cases = []
    for name in available():
        for i, options in enumerate(variants(name)):
            cases.append(pytest.param(name, options, "auto", id=f"{name}-{i}-auto"))
        if "reference" in layer_class(name).backends:
            cases.append(pytest.param(name, variants(name)[0], "reference", id=f"{name}-0-reference"))
    return cases


@pytest.mark.parametrize("name, options, backend", _block_cases())
def test_cpu_inputs_inside_a_meta_default_device_block_run_as_outside_it(name, options, backend):
    # `with torch.device(...)` (or torch.set_default_device) changes where a factory call without `device=` puts its
    # tensor, not where the inputs are. The C kernels' wrappers allocated their outputs so ("native kernel: expected
    # a CPU tensor, got one on meta"): S4, S4D, DSS, DLR, GSS, H3 and Liquid-S4 failed in such a block, and so did
    # Liquid-S4's float64 "lecun" contraction (its constants as 0-dim tensors of the default device).
    options = {**NEEDED_AT_TINY_WIDTH.get(name, {}), **options}
    outside, inside = (_outputs_on_cpu(name, options, backend, block) for block in (False, True))
    assert len(inside) == len(outside)
    for a, b in zip(inside, outside):
        assert a.device.type == "cpu" and torch.equal(a, b)


def test_dropout_state_selection_and_blocked_fft_inside_a_meta_default_device_block():
    # the native dropout's seed (a CPU draw), select_state's list index and the blocked FFT convolution's spectrum
    # buffer were made on the default device: inside a meta block, "Cannot copy out of meta tensor" / a meta buffer
    from ssmkit.layers import select_state
    from ssmkit.ops import dropout as dropout_module
    from ssmkit.ops import fftblocks

    x = torch.randn(4, 64, 8, dtype=torch.float64)
    state = [torch.randn(4, 3), None, (torch.randn(4, 2, 5),)]
    u, k = torch.randn(2, 300, 16, dtype=torch.float64), torch.randn(16, 600, dtype=torch.float64)
    results = []
    for block in (False, True):
        with torch.device("meta") if block else contextlib.nullcontext():
            torch.manual_seed(5)
            dropped = dropout_module.dropout(x, 0.3, training=True)
            rows = select_state(state, [2, 0])
            y, spectrum, _ = fftblocks.conv_forward_blocked(u, k)
        results.append([dropped, *_tensors(rows), y, spectrum])
    assert (results[0][0] == 0).any() and rows[1] is None
    for a, b in zip(*results):
        assert a.device.type == "cpu" and torch.equal(a, b)
    want = torch.fft.irfft(torch.fft.rfft(u.transpose(1, 2), n=600) * torch.fft.rfft(k, n=600), n=600)[..., :300]
    assert torch.allclose(results[1][-2], want.transpose(1, 2), rtol=0, atol=1e-12)


def test_the_native_smoke_call_runs_on_the_cpu_inside_a_meta_default_device_block(monkeypatch):
    # The first native call of a process runs a smoke call that draws from a CPU generator: inside a meta (or cuda)
    # default-device block it failed, and the kernel was marked unusable for the rest of the process (slow, silently).
    from ssmkit.ops.native import gate

    monkeypatch.setattr(gate, "_STATUS", {})
    with torch.device("meta"):
        inside = gate.native_status("ssm_scan", torch.float64)
    monkeypatch.setattr(gate, "_STATUS", {})
    outside = gate.native_status("ssm_scan", torch.float64)  # ok where a C compiler is, else the same reason
    assert inside == outside
