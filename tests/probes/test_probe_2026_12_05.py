"""New-user probe of 2026-12-05 (an ML researcher and a control engineer, first day with ssmkit): silent wrong answers,
each number against an independent reference.

1. *Optimizer marks of reparametrised SSM parameters.* ``torch.nn.utils.parametrize`` (``weight_norm``,
   ``orthogonal``, a user's constraint, even the identity) moves a tensor ``t`` of a layer to
   ``parametrizations.t.original`` (``original0``/``original1`` for weight_norm's g and v). ``marked_parameters``
   looked the marks up under the new name, so Δ, A, B, P reparametrised this way left the SSM group and trained at
   the global learning rate with weight decay (``param_groups`` and the sysid trainer's groups alike), and a
   reparametrised norm weight or bias got weight decay. Reference: the groups of the same model without the
   parametrizations, each original standing for the tensor it holds.
2. *A ``forward`` set on a projection's instance* (accelerate's ``add_hook_to_module``, an activation-steering patch:
   ``linear.forward = ...``) is what calling the module runs, but the fused paths (the Block's GLU, the mixers'
   row-blocked projections, Mamba's fused W_Δ, the mixers' fused C steps) took such a module for a plain one and read
   its weights directly: S4D's forward was 0.43 (relative) off the patched model while its ``step`` followed the
   patch, Mamba's 0.41 (L 30) / 0.79 (L 2 100), Mamba-2's 0.49 / 0.80, RG-LRU's 0.35 / 0.44, and Mamba's fused
   step 2.8e-2 off. Reference: the same model with forward hooks doing what the patches do (a hooked module is
   called, the documented way).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

import ssmkit.layers as layers
from ssmkit.layers.mamba2 import GatedRMSNorm
from ssmkit.layers.rglru import BlockDiagonalLinear
from ssmkit.models import SequenceModel
from ssmkit.sysid import DeepWiener
from ssmkit.sysid.fit import SimulationFit, _groups
from ssmkit.train import param_groups
from tests.conftest import NEEDED_AT_TINY_WIDTH, rel_err, run_steps

F64 = torch.float64


# ---------------------------------------------------------------------------------------------------------------------
# 1. optimizer marks follow a reparametrised tensor


class _Identity(nn.Module):
    def forward(self, x):
        return x


def _groups_by_tensor(model: nn.Module, groups: list[dict]) -> dict[str, tuple[float, float]]:
    """{the name of the tensor each parameter stands for: (lr, weight decay)}: a parametrised tensor's originals are
    named after it (``a.parametrizations.B.original1`` -> ``a.B``)."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for g in groups:
        for p in g["params"]:
            name = names[id(p)]
            if ".parametrizations." in f".{name}":
                owner, _, rest = f".{name}".partition(".parametrizations.")
                name = (owner[1:] + "." if owner else "") + rest.split(".")[0]
            key = (g["lr"], g["weight_decay"])
            assert out.setdefault(name, key) == key, name  # weight_norm's g and v in one group
    return out


SSM_LAYERS = ["s4d", "s4", "s5", "lru", "dlr", "dss", "mamba", "mamba2", "rglru", "ema", "sgconv", "hyena", "gss", "h3",
              "mega", "liquid_s4"]


@pytest.mark.parametrize("name", SSM_LAYERS)
def test_param_groups_keep_the_marks_of_reparametrised_ssm_parameters(name):
    torch.manual_seed(0)
    opts = {**NEEDED_AT_TINY_WIDTH.get(name, {}), "lr": 1e-3}
    model = SequenceModel(2, 4, 1, name, opts, 3)
    expected = _groups_by_tensor(model, param_groups(model, lr=1e-2, weight_decay=0.1))
    layer = model.blocks[0].layer
    marks = [(m, t) for m in layer.modules() for t in layers.optim_marks(m)]
    assert marks  # every one of these layers has SSM parameters
    for i, (module, tensor) in enumerate(marks):
        if i % 2 == 0 or getattr(module, tensor).dim() < 2:
            parametrize.register_parametrization(module, tensor, _Identity())  # changes no value
        else:
            weight_norm(module, tensor)  # original0 = g, original1 = v
    # and a norm weight and a bias: no weight decay either way
    parametrize.register_parametrization(model.blocks[0].norm, "weight", _Identity())
    parametrize.register_parametrization(model.head, "bias", _Identity())
    got = _groups_by_tensor(model, param_groups(model, lr=1e-2, weight_decay=0.1))
    assert got == expected  # before: the reparametrised SSM tensors had (0.01, 0.1), the norm weight and bias 0.1


def test_sysid_groups_keep_the_marks_of_reparametrised_ssm_parameters():
    torch.manual_seed(0)
    model = DeepWiener(1, 1, d_model=3, n_layers=1, layer="s4d", layer_options={"d_state": 4})
    cfg = SimulationFit(lr=1e-2)
    expected = _groups_by_tensor(model, _groups(model, cfg))
    parametrize.register_parametrization(model.layers[0], "log_dt", _Identity())
    weight_norm(model.layers[0], "B")
    got = _groups_by_tensor(model, _groups(model, cfg))
    assert got == expected
    assert got["layers.0.log_dt"] == got["layers.0.B"] != got["encoder.weight"]


# ---------------------------------------------------------------------------------------------------------------------
# 2. a forward patched onto a module's instance is what runs


def _double_output(module: nn.Module) -> None:
    """Patch ``module.forward`` on the instance, as accelerate's hooks and activation-steering code do."""
    old = module.forward

    def forward(*args, **kwargs):
        return 2.0 * old(*args, **kwargs)

    module.forward = forward


PATCHED_TYPES = (nn.Linear, nn.GLU, GatedRMSNorm, BlockDiagonalLinear)

PATCH_CASES = [
    ("s4d", {"d_state": 4}, 30),  # the Block's Linear + GLU (fused GLU)
    ("mamba", {"d_state": 4}, 30),  # in/x/dt/out projections, the fused W_Δ and the fused C step
    ("mamba", {"d_state": 4}, 2100),  # B·L > 2 row blocks: the row-blocked GEMMs
    ("mamba2", {"d_state": 4, "headdim": 2}, 30),  # projections and the gated RMSNorm (fused step)
    ("rglru", {"lru_width": 4, "n_heads": 2}, 30),  # projections and the block-diagonal gates (fused step)
    ("rglru", {"lru_width": 4, "n_heads": 2}, 2100),
]


@pytest.mark.parametrize("name,opts,L", PATCH_CASES, ids=[f"{n}-L{L}" for n, _, L in PATCH_CASES])
def test_a_forward_patched_on_the_instance_runs_in_forward_and_step(name, opts, L):
    torch.manual_seed(0)
    model = SequenceModel(3, 4, 1, name, opts, 2, pool=None, head="regress", dtype=F64)
    patched, hooked = copy.deepcopy(model), copy.deepcopy(model)
    count = 0
    for a, b in zip(patched.blocks.modules(), hooked.blocks.modules()):
        if type(a) in PATCHED_TYPES:
            _double_output(a)
            b.register_forward_hook(lambda module, args, out: 2.0 * out)  # the reference: a hooked module is called
            count += 1
    assert count >= 2
    x = torch.randn(2, L, 3, dtype=F64)
    with torch.no_grad():
        y_ref, _ = hooked(x)
        y, _ = patched(x)
        assert rel_err(y, y_ref) < 1e-12  # before: 0.35-0.80
        assert rel_err(y, model(x)[0]) > 1e-2  # the patches matter
        if L <= 30:
            y_steps, _ = run_steps(patched, x)
            y_steps_ref, _ = run_steps(hooked, x)
            assert rel_err(y_steps, y_steps_ref) < 1e-12  # before: Mamba's fused step 2.8e-2
            assert rel_err(y_steps, y) < 1e-12


# ---------------------------------------------------------------------------------------------------------------------
# 3. set_discrete_poles / init_from_data write a reparametrised tensor through its parametrization


class _Twice(nn.Module):
    """A constraint with an inverse (as ``torch.nn.utils.parametrize`` asks for writes)."""

    def forward(self, x):
        return 2.0 * x

    def right_inverse(self, y):
        return y / 2.0


class _ClampHigh(nn.Module):
    """A constraint without an inverse: a write through it is impossible."""

    def forward(self, x):
        return x.clamp(max=5.0)


POLE_TENSORS = [("s4d", {}, "log_A_real"), ("s4d", {"discretization": "bilinear"}, "A_imag"),
                ("s5", {"blocks": 2}, "A_real"), ("s5", {"blocks": 2}, "A_imag"), ("dlr", {}, "A_sqrt_neg_real"),
                ("lru", {}, "log_nu"), ("lru", {}, "log_theta")]


@pytest.mark.parametrize("name,opts,tensor", POLE_TENSORS, ids=[f"{n}-{t}" for n, _, t in POLE_TENSORS])
def test_set_discrete_poles_writes_a_reparametrised_tensor(name, opts, tensor):
    import numpy as np

    from ssmkit.sysid.init import set_discrete_poles

    torch.manual_seed(0)
    z = np.array([0.5 * np.exp(0.6j), 0.9 * np.exp(0.1j)])  # the poles asked for: the reference
    layer = layers.build(name, d_model=2, d_state=16, dtype=F64, **opts)
    parametrize.register_parametrization(layer, tensor, _Twice())
    set_discrete_poles(layer, z)
    poles = layer.state_space().to_real().poles()  # (G, n)
    for g in range(poles.shape[0]):
        for want in np.concatenate([z, z.conj()]):
            assert np.abs(poles[g] - want).min() < 1e-12  # before: the slice went into a temporary (s4d |z| 0.99)
    clamped = layers.build(name, d_model=2, d_state=16, dtype=F64, **opts)
    parametrize.register_parametrization(clamped, tensor, _ClampHigh())
    with pytest.raises(ValueError, match="right_inverse"):
        set_discrete_poles(clamped, z)


# ---------------------------------------------------------------------------------------------------------------------
# torch.ao dynamically quantised linears (README: "quantised linears" among the wrapped projections)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["attention", "h3"])
def test_dynamically_quantised_projections_run_forward_and_step(name):
    # attention and h3 read their projection's ``weight.dtype``: a method on a quantised linear, so both raised
    # "'function' object has no attribute ..."; now they run, within int8's rounding of the float model, and their
    # step loop equals their forward on the same quantised weights
    from torch.ao.quantization import quantize_dynamic

    import ssmkit.layers as layers

    torch.manual_seed(0)
    float_layer = layers.build(name, d_model=16).eval()
    quantised = quantize_dynamic(copy.deepcopy(float_layer), {torch.nn.Linear}, dtype=torch.qint8)
    x = torch.randn(2, 20, 16)
    with torch.no_grad():
        want = float_layer(x)[0]
        got = quantised(x)[0]
        state = quantised.initial_state(2)
        steps = []
        for t in range(x.shape[1]):
            y_t, state = quantised.step(x[:, t], state)
            steps.append(y_t)
    assert 0 < rel_err(got, want) < 0.1  # int8 weights (and per-call activation scales): ~2-3 % here
    assert rel_err(torch.stack(steps, 1), got) < 0.1  # per-step activation scales differ from the whole call's


def test_dynamically_quantised_sequence_model_runs():
    from torch.ao.quantization import quantize_dynamic

    from ssmkit.models import SequenceModel

    torch.manual_seed(0)
    model = SequenceModel(d_input=3, d_model=16, n_layers=2, layer="s4d", d_output=2).eval()
    quantised = quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
    x = torch.randn(2, 30, 3)
    with torch.no_grad():
        want, got = model(x)[0], quantised(x)[0]  # (y, state)
    assert 0 < rel_err(got, want) < 0.1
    with pytest.raises(ValueError, match="x must be on the model's device cpu; got meta"):
        quantised(x.to("meta"))
