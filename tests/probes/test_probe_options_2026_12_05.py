"""Options probe of 2026-12-05: every constructor option a layer keeps as a public attribute, assigned a legal other
value after construction, against the same layer's other views and a layer built with that value and the same weights
(``load_state_dict``): ``forward``, ``step``, a chunked ``forward`` continued from its state, ``kernel(L)`` and
``state_space()``, after a first call had filled the caches (float64, d_model 4, L 12; every layer in
``ssmkit.layers.available()`` and every option its signature names and ``vars(layer)`` holds, 155 in all; then the
sizes derived from them and the options of the ssmkit sub-modules: ``ShortConv``, ``HyenaFilter``, ``GatedRMSNorm``,
``BlockDiagonalLinear``, ``GSSDiagonal``, Mega's EMA, H3's S4D).

Found (fixed: every such option, and the sizes derived from them, is now a ``checks.FixedOption``, whose assignment
raises ``AttributeError`` naming the value and the fix; Mamba-2's ``chunk_size`` alone stays assignable):

1. *Half-applied*: ``forward``, ``kernel()`` and ``state_space()`` took the new value, the cached ``step`` kept the old
   one. SGConv ``decay_min`` 1.5 -> 1.2 and ``decay_max`` 3 -> 4: ``step`` 7.5 % and 8.5 % off ``forward``; S4D
   ``discretization`` zoh -> bilinear: 34 %; S5 ``discretization``: 6e-4, ``conj_sym``: 5.8 %, ``step_rescale``
   1 -> 0.5: 5.8 %; Hyena's ``filter.l_max`` 16 -> 32: 3.4 %; Mamba-2 ``norm_before_gate`` False -> True the other
   way round: ``forward`` ignored it (2.2x off a layer built with True), the C step read it: ``step`` 80 % off.
2. *Ignored*: Hyena's ``l_max`` (the filter keeps its own: 3.4 % off a layer built with the value); every ``lr`` and
   DLR's ``lr_W`` (the optimizer marks stay those of construction); every option only ``reset_parameters`` reads
   (``dt_min``, ``dt_max``, ``init``, ``B_clip``, ``dt_init``, ``dt_scale``, ``dt_init_floor``, ``A_init_range``,
   ``r_min``, ``r_max``, ``max_phase``, ``C_init``, ``a_min``, ``a_max``, ``out_init_scale``, ``sine_freq``: nothing
   until a later ``reset_parameters()`` drew from the new value); shape options whose tensors were built (attention
   ``bias``, DSS ``separate_dt``, GSS ``d_state``/``expand``/``bottleneck``, Hyena ``filter_width``/``emb_dim``/
   ``n_inner``/``short_width``, S4 ``init``/``n_ssm``, Mamba ``expand``/``dt_rank``/``conv_bias``/``bias``, Mamba-2
   ``d_conv``/``expand``/``rmsnorm``/``bias``/``conv_bias``, Mega ``d_state``, RG-LRU ``n_heads``, SGConv
   ``l_max``/``kernel_dim``): the attribute, and ``extra_repr``, then described another layer.
3. *Broke the layer* at the next call (shape errors deep inside): ``d_model`` everywhere, ``d_state`` of 11 layers,
   ``bidirectional=True`` of 8, DSS ``version``, attention ``n_heads``/``head_dim``, H3 ``head_dim``, Hyena ``order``,
   Mamba-2 ``headdim``/``ngroups``/``D_has_hdim``, Mega ``d_qk``/``d_v``/``positional``, RG-LRU ``lru_width``.
4. *Crashed the process*: Mamba ``d_conv`` 4 -> 3 then ``step``: heap corruption, abort (exit 134); RG-LRU
   ``conv_width`` 4 -> 3: segmentation fault (exit 139). Their ``state_spec`` read the option while the C steps write
   as many columns as the conv has taps; replacing the conv sub-module by a wider ``ShortConv`` did the same with the
   options untouched. Fixed too: both take the state spec from the conv (as Mamba-2 did).
5. Took effect consistently (``forward`` = ``step`` = the rebuilt layer, <= 5e-16) but change what the trained weights
   mean, so fixed as well (STYLE rule 6): attention ``positional``/``window``/``rotary_base``, Liquid-S4
   ``liquid_kernel`` (3.6 %)/``liquid_degree``/``liquid_contract``, RG-LRU ``c`` (29 %), Mega ``attention`` and
   ``chunk_size`` (8 -> 5, its relative-bias table still sized for 8).

Checked right and kept assignable: Mamba-2 ``chunk_size`` (speed only: ``forward`` = ``step`` = the rebuilt layer
<= 3e-16; read by each forward, cached nowhere), now a ``checks.AssignableOption`` checked at assignment (before, 0
passed and failed at the next call, and ran under the reference backend).

Also: ``ShortConv(bias=False)`` kept ``bias`` and ``Mamba2(rmsnorm=False)`` kept ``norm`` as plain None attributes
(now a parameter and a sub-module slot holding None, as ``nn.Conv1d``'s bias); ``FixedOption`` keeps its value
under the option's own name (a ``_version`` slot for DSS's ``version`` would have shadowed ``torch.nn.Module._version``,
the state dict's metadata).
"""

from __future__ import annotations

import copy
import inspect
import io
import pickle
import re

import pytest
import torch

import ssmkit.layers as layers
from ssmkit.layers.checks import AssignableOption, FixedOption
from ssmkit.layers.mamba2 import GatedRMSNorm
from ssmkit.layers.shortconv import ShortConv
from ssmkit.ops.native import native_available
from tests.conftest import DEVICE, H, make_layer, rel_err, run_steps, variants

F64 = torch.float64
L = 11
TOL = 1e-12

# The options verified below to take effect exactly, in every view, when assigned: (layer, sub-module path, attribute)
# -> a legal other value. Every other public attribute of every ssmkit module in a layer must be a FixedOption.
ASSIGNABLE = {("mamba2", "", "chunk_size"): 3}

# Other values to try, in order, for a string or None option (numbers are doubled or moved, flags flipped); the first
# one the layer's constructor accepts is assigned.
OTHER_STRINGS = ("legt", "lin", "randn", "inv", "paper", "bilinear", "zoh", "softmax", "laplace", "kb", "tanh",
                 "constant", "lecun_normal", "rotary", "simple", None)


def own_modules(layer: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(path, module) of the layer and of each sub-module whose class ssmkit defines (not torch's Linear, LayerNorm)."""
    return [(path, m) for path, m in layer.named_modules() if type(m).__module__.startswith("ssmkit.")]


def public_attributes(module: torch.nn.Module) -> list[str]:
    """The module's public plain attributes: its constructor options and the sizes derived from them (everything public
    in its ``__dict__``, where FixedOption and AssignableOption keep their values; tensors and sub-modules live in the
    module's own dicts)."""
    return sorted(k for k in vars(module) if not k.startswith("_") and k != "training")


def options_by_property(module: torch.nn.Module) -> list[str]:
    """Constructor arguments the class exposes through a property with a setter (assignable, and not in ``vars``)."""
    cls = type(module)
    return [p for p in inspect.signature(cls).parameters
            if isinstance(inspect.getattr_static(cls, p, None), property) and inspect.getattr_static(cls, p).fset]


def candidates(value: object) -> list[object]:
    """Other values of an option's type, most likely legal first."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [2 * value, value + 1, value + 2, 1]
    if isinstance(value, float):
        return [2 * value, value / 2]
    if isinstance(value, tuple):
        return [tuple(2 * v for v in value)]
    return [s for s in OTHER_STRINGS if s != value] + [16, 1e-4]


def other_value(name: str, path: str, attr: str, value: object) -> object:
    """A legal other value for a layer's constructor option (the first candidate its constructor accepts), else the
    first candidate (a sub-module's option or a derived size: FixedOption refuses any value)."""
    options = candidates(value)
    if path == "" and attr in inspect.signature(layers.layer_class(name)).parameters:
        for other in options:
            try:
                layers.build(name, d_model=H, **{**variants(name)[0], attr: other})
            except (ValueError, TypeError):
                continue
            return other
    return options[0]


def _cases() -> list:
    cases = []
    for name in layers.available():
        for path, module in own_modules(make_layer(name)):
            for attr in public_attributes(module):
                if (name, path, attr) not in ASSIGNABLE:
                    cases.append(pytest.param(name, path, attr, id=f"{name}-{path + '.' if path else ''}{attr}"))
    return cases


def views(layer, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The layer's output by every view it has: forward, step, forward continued from its state, kernel, state space."""
    out = {}
    with torch.no_grad():
        out["forward"] = layer(x)[0]
        if layer.supports("step"):
            out["step"] = run_steps(layer, x)[0]
            y1, h1 = layer(x[:, :4])
            out["chunked"] = torch.cat([y1, layer(x[:, 4:], h1)[0]], dim=1)
        if layer.supports("kernel") and not layer.bidirectional:
            K = layer.kernel(x.shape[1])  # (H, L) or (H, H, L)
            lag = torch.arange(x.shape[1])[:, None] - torch.arange(x.shape[1])[None, :]  # (L, L): t - s
            T = K[..., lag.clamp(min=0)] * (lag >= 0)  # (H, L, L) or (H, H, L, L)
            eq = "hts,bsh->bth" if K.dim() == 2 else "oits,bsi->bto"
            out["kernel"] = torch.einsum(eq, T, x.to(K.dtype))
        if layer.supports("state_space"):
            out["state_space"] = layer.state_space().simulate(x)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Every option is fixed or verified assignable (findings 1-5)


@pytest.mark.parametrize("name", layers.available())
def test_every_stored_option_is_fixed_or_verified_assignable(name):
    """Every public attribute of every ssmkit module of the layer, in each tested variant, is a FixedOption, or an
    AssignableOption listed in ASSIGNABLE (a new layer or option is covered without editing this file)."""
    for opts in variants(name):
        layer = make_layer(name, opts)
        for path, module in own_modules(layer):
            cls = type(module)
            for attr in public_attributes(module) + options_by_property(module):
                where = f"{name} {opts}: {cls.__name__}.{attr} (at {path or 'the layer'})"
                kind = inspect.getattr_static(cls, attr, None)
                if (name, path, attr) in ASSIGNABLE:
                    assert isinstance(kind, AssignableOption), f"{where} is listed as assignable but is {kind!r}"
                else:
                    assert isinstance(kind, FixedOption), (
                        f"{where} is neither fixed (checks.FixedOption) nor verified assignable (ASSIGNABLE here)")


@pytest.mark.parametrize("name, path, attr", _cases())
def test_assigning_a_fixed_option_raises_and_changes_nothing(name, path, attr):
    layer = make_layer(name)
    module = layer.get_submodule(path)
    value = getattr(module, attr)
    other = other_value(name, path, attr, value)
    x = torch.randn(2, L, H, dtype=F64)
    with torch.no_grad():
        y0 = layer(x)[0]
    message = rf"^{attr} is fixed at construction \(.* {attr}={re.escape(repr(value))}\); got an assignment of "
    with pytest.raises(AttributeError, match=message + re.escape(repr(other))):
        setattr(module, attr, other)
    with pytest.raises(AttributeError, match=rf"^{attr} is fixed at construction"):
        delattr(module, attr)
    assert getattr(module, attr) == value and vars(module)[attr] == value
    with torch.no_grad():
        assert torch.equal(layer(x)[0], y0)


@pytest.mark.parametrize("name, path, attr", list(ASSIGNABLE))
def test_an_assignable_option_takes_effect_in_every_view(name, path, attr):
    """Assigned after every cache was filled, the option gives exactly the layer built with it (same weights)."""
    layer = make_layer(name)
    with torch.no_grad():
        for p in layer.parameters():  # away from the structured inits
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(2, L, H, dtype=F64)
    views(layer, x)  # fills the caches
    other = ASSIGNABLE[(name, path, attr)]
    assert other != getattr(layer.get_submodule(path), attr)
    setattr(layer.get_submodule(path), attr, other)
    assert getattr(layer.get_submodule(path), attr) == other
    rebuilt = make_layer(name, {**variants(name)[0], attr: other})
    rebuilt.load_state_dict(layer.state_dict())
    got, ref = views(layer, x), views(rebuilt, x)
    assert got.keys() == ref.keys() and "step" in got
    for view in got:
        assert rel_err(got[view], ref["forward"]) <= TOL, view
        assert rel_err(ref[view], ref["forward"]) <= TOL, view


def test_mamba2_chunk_size_reaches_the_scan_and_is_checked_when_assigned(monkeypatch):
    import ssmkit.layers.mamba2 as mamba2

    seen = []
    scan = mamba2.ssd
    monkeypatch.setattr(mamba2, "ssd", lambda *a, **k: seen.append(k["chunk_size"]) or scan(*a, **k))
    layer = make_layer("mamba2")
    x = torch.randn(2, L, H, dtype=F64)
    layer(x)
    layer.chunk_size = 3
    layer(x)
    assert seen == [variants("mamba2")[0]["chunk_size"], 3]
    for bad in (0, 2.5, True):  # refused at once (0 used to pass and fail at the next call, or run under "reference")
        with pytest.raises(ValueError, match=rf"chunk_size must be a positive int; got {bad!r}"):
            layer.chunk_size = bad
    assert layer.chunk_size == 3


# ---------------------------------------------------------------------------------------------------------------------
# Copies keep the options, fixed (and extra_repr shows them)


@pytest.mark.parametrize("name", layers.available())
def test_fixed_options_survive_deepcopy_pickle_and_torch_save(name):
    layer = make_layer(name)
    x = torch.randn(2, L, H, dtype=F64)
    with torch.no_grad():
        y = layer(x)[0]
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    copies = {"deepcopy": copy.deepcopy(layer), "pickle": pickle.loads(pickle.dumps(layer)),
              "torch.save": torch.load(buffer, weights_only=False)}
    assert f"d_model={H}" in layer.extra_repr()
    for how, copied in copies.items():
        assert repr(copied) == repr(layer), how
        with torch.no_grad():
            assert torch.equal(copied(x)[0], y), how
        assert copied.state_dict()._metadata == layer.state_dict()._metadata, how  # no option shadows Module._version
        for path, module in own_modules(layer):
            twin = copied.get_submodule(path)
            for attr in public_attributes(module):
                assert getattr(twin, attr) == getattr(module, attr), (how, path, attr)
                if (name, path, attr) not in ASSIGNABLE:
                    with pytest.raises(AttributeError, match=rf"^{attr} is fixed at construction"):
                        setattr(twin, attr, getattr(twin, attr))  # even the same value: fixed on the copy too


@pytest.mark.parametrize("name", layers.available())
def test_extra_repr_shows_the_fixed_values(name):
    """Each ``option=value`` of a module's extra_repr that names a FixedOption shows that option's value (Mamba's
    ``dt_rank`` shows the rank it resolved, an int, for ``"auto"``)."""
    layer = make_layer(name)
    shown = 0
    for _, module in own_modules(layer):
        for key, text in re.findall(r"(\w+)=(\([^)]*\)|[^,]+)", module.extra_repr()):
            if isinstance(inspect.getattr_static(type(module), key, None), FixedOption):
                value = module.rank if (type(module).__name__, key) == ("Mamba", "dt_rank") else getattr(module, key)
                assert text in (str(value), repr(value)), (type(module).__name__, key, text, value)
                shown += 1
    assert shown >= 2


# ---------------------------------------------------------------------------------------------------------------------
# The state follows the modules the step runs (finding 4; Mamba-2's norm flag, finding 1)


@pytest.mark.parametrize("name, conv", [("mamba", "conv1d"), ("rglru", "conv")])
def test_the_state_follows_a_replaced_conv(name, conv):
    """A wider conv put in place of the layer's: the state spec took the width from the option (d_conv, conv_width),
    and the C step wrote the conv's wider state past the tensor it was given (abort or segmentation fault)."""
    layer = make_layer(name)
    old = getattr(layer, conv)
    torch.manual_seed(3)
    setattr(layer, conv, ShortConv(old.channels, old.width + 2, dtype=F64))
    assert tuple(layer.state_spec()[0].shape) == (old.channels, old.width + 1)  # was (channels, old.width - 1)
    x = torch.randn(2, L, H, dtype=F64)
    with torch.no_grad():
        y, h = layer(x)
        assert h[0].shape == layer.initial_state(2)[0].shape
        s, h_s = run_steps(layer, x)  # the C step where it runs
    assert rel_err(s, y) <= TOL and rel_err(h_s[0], h[0]) <= TOL and rel_err(h_s[1], h[1]) <= TOL


@pytest.mark.skipif(DEVICE.type != "cpu" or not native_available("mamba2_step", F64),
                    reason="the fused C step runs on the CPU where a C compiler builds it")
def test_mamba2_c_step_gates_as_the_norm_it_runs(monkeypatch):
    """The C step read the layer's ``norm_before_gate``, the forward its norm's: a norm put in place with the other
    order (or, before the option was fixed, the option assigned) made ``step`` 80 % (probe) to 2.7x (here) off
    ``forward``."""
    import ssmkit.ops.native.mamba2_step as native

    calls = []
    fused = native.mamba2_step_native
    monkeypatch.setattr(native, "mamba2_step_native", lambda *a: calls.append(1) or fused(*a))
    layer = make_layer("mamba2")
    assert not layer.norm_before_gate
    norm = GatedRMSNorm(layer.d_inner, layer.ngroups, norm_before_gate=True, dtype=F64)
    with torch.no_grad():
        norm.weight.copy_(torch.rand_like(norm.weight) + 0.5)
    layer.norm = norm
    x = torch.randn(2, L, H, dtype=F64)
    with torch.no_grad():
        y = layer(x)[0]
        s = run_steps(layer, x)[0]
    assert len(calls) == L  # the fused step ran
    assert rel_err(s, y) <= TOL
