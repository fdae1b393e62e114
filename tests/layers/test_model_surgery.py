"""Model surgery on ssmkit layers and models: the PyTorch idioms users apply to pretrained models, each checked against
an independent reference, a fresh layer of the same kind holding the modified weights written in plainly (loaded with
``load_state_dict``; it has none of the surgery and empty caches), in every view the layer has (``forward``, the
``step`` loop, ``kernel``, ``state_space``).

The layers cache discretisations, kernels and step plans (:mod:`ssmkit.layers.cache`); the risk is a stale cache or a
fused path that reads a weight around the surgery. Idioms: ``torch.nn.utils.parametrize`` (a learned shift on an SSM
tensor and a projection weight, trained through the parametrization's own parameter, ``parametrize.cached()``),
LoRA adapters (a peft-style wrapper that still exposes ``weight``, and a low-rank parametrization), pruning then
``prune.remove``, ``parametrizations.weight_norm`` / ``spectral_norm``, dynamic int8 quantisation, in-place and
and in-place and non-contiguous parameter swaps. (``reset_parameters`` after surgery writes into the
parametrization's output or the pruned product, temporaries, as ``nn.Linear.reset_parameters`` does: PyTorch's
behaviour, kept; reset before the surgery, or remove it first.)
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrize, prune
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

import ssmkit
from ssmkit.layers import build, frozen_parameters

from tests.conftest import DEVICE, variants

NAMES = ssmkit.layers.available()
L = 9
H = 4


def make(name: str, seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return build(name, d_model=H, **variants(name)[0]).to(device=DEVICE, dtype=dtype)


def linears(module: nn.Module) -> list[str]:
    return [n for n, m in module.named_modules() if type(m) is nn.Linear]


def effective_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors the module computes with, under their plain names: a parametrized tensor's current value, a
    pruned tensor's ``orig * mask`` (recomputed here, not the attribute the last call left)."""
    state = {}
    for prefix, m in module.named_modules():
        if "parametrizations" in prefix.split("."):
            continue
        names = set(m._parameters) | set(m._buffers)
        if parametrize.is_parametrized(m):
            names = (names - {"parametrizations"}) | set(m.parametrizations.keys())
        for name in names:
            if name.endswith("_mask"):
                continue
            if name.endswith("_orig") and hasattr(m, name[:-5] + "_mask"):
                t, name = getattr(m, name) * getattr(m, name[:-5] + "_mask"), name[:-5]
            else:
                t = getattr(m, name)
            if t is not None:
                state[f"{prefix}.{name}" if prefix else name] = t.detach().clone()
    return state


def plain_copy(name: str, state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float64) -> nn.Module:
    ref = make(name, seed=123, dtype=dtype)
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected and not [k for k in missing if "." not in k or k.rsplit(".", 1)[1] != "weight_mask"]
    return ref


def run_steps(layer, x: torch.Tensor) -> torch.Tensor:
    state = layer.initial_state(x.shape[0])
    ys = []
    for t in range(x.shape[1]):
        y, state = layer.step(x[:, t], state)
        ys.append(y)
    return torch.stack(ys, 1)


def views(layer, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {}
    with torch.no_grad():  # forward (a module call, which runs forward pre-hooks such as prune's) last
        if layer.capabilities.kernel:
            out["kernel"] = layer.kernel(L)
        if layer.capabilities.state_space:
            ss = layer.state_space()
            out["state_space"] = torch.cat([torch.tensor(a).reshape(-1) for a in (ss.A, ss.B, ss.C, ss.D)])
        out["step"] = run_steps(layer, x)
        out["forward"] = layer(x)[0]
    return out


def assert_matches(layer, name: str, x: torch.Tensor, what: str, state=None, tol: float = 1e-10) -> None:
    """Every view of ``layer`` equals that of a fresh layer holding its effective weights."""
    ref = views(plain_copy(name, effective_state(layer) if state is None else state, x.dtype), x)
    got = views(layer, x)
    for k in ref:
        err = ((got[k] - ref[k]).abs().max() / ref[k].abs().max()).item()
        assert err < tol, f"{name} {what}: {k} is {err:.2g} (relative) from the plain layer holding the same weights"


def warm(layer, x: torch.Tensor) -> None:
    """Fill every cache (no-grad views, then a forward with autograd)."""
    views(layer, x)
    layer(x)[0].sum()


class Shift(nn.Module):
    """X -> X + δ, δ learned (a parametrization with its own parameter)."""

    def __init__(self, shape):
        super().__init__()
        self.delta = nn.Parameter(0.05 * torch.randn(shape))

    def forward(self, X):
        return X + self.delta

    def right_inverse(self, X):
        return X - self.delta


class LowRank(nn.Module):
    """W -> W + B A (a LoRA delta as a parametrization)."""

    def __init__(self, weight):
        super().__init__()
        self.A = nn.Parameter(0.3 * torch.randn(2, weight.shape[1], dtype=weight.dtype, device=weight.device))
        self.B = nn.Parameter(0.3 * torch.randn(weight.shape[0], 2, dtype=weight.dtype, device=weight.device))

    def forward(self, W):
        return W + self.B @ self.A


class LoRA(nn.Module):
    """peft-style adapter: base(x) + s B A x, the base Linear kept and its weight and bias still exposed."""

    def __init__(self, base: nn.Linear, s: float = 0.5):
        super().__init__()
        self.base, self.s = base, s
        w = base.weight
        self.A = nn.Parameter(0.3 * torch.randn(2, base.in_features, dtype=w.dtype, device=w.device))
        self.B = nn.Parameter(0.3 * torch.randn(base.out_features, 2, dtype=w.dtype, device=w.device))
        self.in_features, self.out_features = base.in_features, base.out_features

    @property
    def weight(self):
        return self.base.weight

    @property
    def bias(self):
        return self.base.bias

    def forward(self, x):
        return self.base(x) + self.s * (x @ self.A.T) @ self.B.T


def merged_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's weights with every LoRA wrapper merged: W + s B A under the wrapper's name."""
    wrappers = {n: m for n, m in module.named_modules() if isinstance(m, LoRA)}
    state = {k: v for k, v in effective_state(module).items() if not any(k.startswith(p + ".") for p in wrappers)}
    for p, m in wrappers.items():
        state[p + ".weight"] = (m.base.weight + m.s * m.B @ m.A).detach()
        if m.base.bias is not None:
            state[p + ".bias"] = m.base.bias.detach().clone()
    return state


def own_ssm_tensor(layer: nn.Module) -> list[str]:
    """The first parameter of the layer itself or of its SSM sub-layer (S4D's log_dt, GSS's ssm.log_A_real, ...), if
    any (attention has projections only)."""
    return [n for n, p in layer.named_parameters() if "." not in n or n.startswith(("ssm.", "ema."))][:1]


def sgd(layer, x, params, lr=0.05) -> None:
    opt = torch.optim.SGD(params, lr=lr)
    opt.zero_grad()
    layer(x)[0].pow(2).mean().backward()
    opt.step()


@pytest.mark.parametrize("name", NAMES)
def test_parametrize_follows_its_inner_parameter(name):
    layer = make(name)
    x = torch.randn(2, L, H, dtype=torch.float64, device=DEVICE)
    warm(layer, x)
    targets = own_ssm_tensor(layer) + [n + ".weight" for n in linears(layer)[:1]]
    for t in targets:
        owner, _, leaf = t.rpartition(".")
        m = layer.get_submodule(owner)
        parametrize.register_parametrization(m, leaf, Shift(getattr(m, leaf).shape).to(DEVICE))
        assert_matches(layer, name, x, f"after registering a shift on {t}")
    deltas = [p for n, p in layer.named_parameters() if n.endswith(".delta")]
    sgd(layer, x, deltas)
    assert_matches(layer, name, x, "after an SGD step on the shifts")
    with torch.no_grad():
        for p in deltas:
            p.mul_(-2.0)
    assert_matches(layer, name, x, "after the shifts were changed in place")
    with parametrize.cached():
        assert_matches(layer, name, x, "inside parametrize.cached()")


@pytest.mark.parametrize("name", [n for n in NAMES if linears(make(n))])
@pytest.mark.parametrize("style", ["wrapper", "parametrization"])
def test_lora_adapters_equal_merged_weights(name, style):
    layer = make(name)
    x = torch.randn(2, L, H, dtype=torch.float64, device=DEVICE)
    warm(layer, x)
    for p in layer.parameters():
        p.requires_grad_(False)
    for n in linears(layer):
        owner, _, leaf = n.rpartition(".")
        if style == "wrapper":
            setattr(layer.get_submodule(owner), leaf, LoRA(layer.get_submodule(n)))
        else:
            lin = layer.get_submodule(n)
            parametrize.register_parametrization(lin, "weight", LowRank(lin.weight))
    adapters = [p for n, p in layer.named_parameters() if n.endswith((".A", ".B")) and p.requires_grad]
    assert len(adapters) == 2 * len(linears(make(name)))
    state = merged_state if style == "wrapper" else effective_state
    assert_matches(layer, name, x, "with adapters", state=state(layer))
    before = views(layer, x)["step"]
    for _ in range(2):
        sgd(layer, x, adapters, lr=0.2)
        assert_matches(layer, name, x, "after an adapter step", state=state(layer))
    assert (views(layer, x)["step"] - before).abs().max() > 1e-6  # training the adapters alone moved the outputs


@pytest.mark.parametrize("name", NAMES)
def test_prune_then_remove_equals_pruned_weights_written_in(name):
    layer = make(name)
    x = torch.randn(2, L, H, dtype=torch.float64, device=DEVICE)
    warm(layer, x)
    targets = list(dict.fromkeys(
        [next(n for n, p in layer.named_parameters() if p.numel() > 3)] + [n + ".weight" for n in linears(layer)[-1:]]
    ))
    for t in targets:
        owner, _, leaf = t.rpartition(".")
        prune.l1_unstructured(layer.get_submodule(owner), leaf, amount=0.4)
        assert_matches(layer, name, x, f"after pruning {t}")
    sgd(layer, x, list(layer.parameters()), lr=0.005)
    assert_matches(layer, name, x, "after a training step of the pruned layer, before any forward")
    for t in targets:
        owner, _, leaf = t.rpartition(".")
        prune.remove(layer.get_submodule(owner), leaf)
    assert_matches(layer, name, x, "after prune.remove")
    sgd(layer, x, list(layer.parameters()), lr=0.005)
    assert_matches(layer, name, x, "after a training step once the pruning was removed")


@pytest.mark.parametrize("name", [n for n in NAMES if linears(make(n))])
@pytest.mark.parametrize("norm", ["weight_norm", "spectral_norm"])
def test_weight_and_spectral_norm_on_projections(name, norm):
    layer = make(name)
    x = torch.randn(2, L, H, dtype=torch.float64, device=DEVICE)
    warm(layer, x)
    for n in linears(layer):
        (weight_norm if norm == "weight_norm" else spectral_norm)(layer.get_submodule(n))
    layer.eval()  # spectral_norm runs a power iteration at every read of the weight in training mode
    assert_matches(layer, name, x, f"after {norm}")
    layer.train()
    sgd(layer, x, list(layer.parameters()))
    layer.eval()
    assert_matches(layer, name, x, f"after an SGD step through {norm}")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["layer", "model"])
@pytest.mark.skipif(DEVICE.type != "cpu", reason="torch.ao dynamic quantisation runs on the CPU")
def test_quantize_dynamic_step_equals_forward(name, kind):
    """``quantize_dynamic`` quantises each call's activations with that call's range, so a step and a whole-sequence
    forward differ at the quantisation level; a forward over one time step at a time, carrying the state, sees the
    step's activations exactly and must equal it to float32 rounding."""
    torch.manual_seed(0)
    if kind == "layer":
        f = build(name, d_model=H, **variants(name)[0]).eval()
    else:
        f = ssmkit.models.SequenceModel(3, H, 2, name, layer_options=variants(name)[0], d_output=2, pool=None).eval()
    x = torch.randn(2, L, H if kind == "layer" else 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(f), {nn.Linear}, dtype=torch.qint8)
    with torch.no_grad():
        ya, yb = [], []
        s1, s2 = q.initial_state(2), q.initial_state(2)
        for t in range(L):
            y, s1 = q.step(x[:, t], s1)
            ya.append(y)
            y, s2 = q(x[:, t:t + 1], s2)
            yb.append(y[:, 0])
        ya, yb, yf = torch.stack(ya, 1), torch.stack(yb, 1), f(x)[0]
    assert ((ya - yb).abs().max() / yb.abs().max()).item() < 1e-5
    assert ((ya - yf).abs().max() / yf.abs().max()).item() < 0.3  # int8 weights: near the float model


@pytest.mark.parametrize("name", NAMES)
def test_parameter_swaps_reach_every_view(name):
    layer = make(name)
    x = torch.randn(2, L, H, dtype=torch.float64, device=DEVICE)
    warm(layer, x)
    for i, n in enumerate([n for n, _ in layer.named_parameters()]):
        owner, _, leaf = n.rpartition(".")
        m = layer.get_submodule(owner)
        p = getattr(m, leaf)
        new = p.detach() * (1 + 0.05 * torch.rand_like(p))
        # the same values at other strides: transposed memory, or every other element of a larger buffer
        if p.dim() >= 2:
            strided = new.transpose(0, -1).contiguous().transpose(0, -1)
        else:
            strided = torch.zeros(2 * p.numel() + 1, dtype=p.dtype, device=p.device)[1::2]
            strided.copy_(new)
        with torch.no_grad():
            [lambda: p.data.copy_(new), lambda: p.set_(strided), lambda: setattr(m, leaf, nn.Parameter(strided)),
             lambda: p.copy_(new)][i % 4]()
    assert_matches(layer, name, x, "after every parameter was swapped")
    with frozen_parameters():
        warm(layer, x)
        layer.load_state_dict({k: v * 1.03 for k, v in layer.state_dict().items()}, assign=True)
        assert_matches(layer, name, x, "after load_state_dict(assign=True) inside frozen_parameters()")
