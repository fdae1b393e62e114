"""Mutation probe (2026-12-07) of the code of the session's fine-tuning, token counts, Tustin prewarping, zoo output,
sequence-ONNX lengths, Mega's EMA at irregular gaps and the irregular bank's PyTorch paths: the mutants that the
feature's own tests (test_transfer, test_module_run_reference -k tokens, test_prewarp, the zoo and examples probes,
test_onnx_bidirectional_lengths, test_ema_long_gaps, test_irregular_bank_gradients, test_generate_beam_reference)
let survive. Each test names the mutants it kills and checks the real code against an independent reference (a plain
dict of tensors, a closed form, a float64 loop, numpy's frequency response).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from torch import nn

from ssmkit.train.transfer import checkpoint_file, freeze_parameters, load_weights, source_state

F64 = torch.float64


# ------------------------------------------------------------------------------------------------------------------
# train/transfer.py: tiny modules whose names are the edge cases (a child called ``model``, a parameter called
# ``head``, names that share a prefix), so the reference is the plain dict of tensors itself


class _Config:
    def __init__(self, **fields):
        self.fields = fields

    def to_dict(self) -> dict:
        return dict(self.fields)


class _Net(nn.Module):
    """encoder (Linear 2->3), a child named ``model`` (Linear 3->3), ``enc`` and ``encoder`` sharing a prefix, a
    ``headnorm`` outside the head and a head (Linear 3->k)."""

    def __init__(self, k: int = 2, norm: int = 3, head_bias: bool = True) -> None:
        super().__init__()
        self.enc = nn.Linear(2, 2)
        self.encoder = nn.Linear(2, 3)
        self.model = nn.Linear(3, 3)
        self.headnorm = nn.LayerNorm(norm)
        self.head = nn.Linear(3, k, bias=head_bias)
        self.config = _Config(k=k, norm=norm)


def _filled(module: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) for k, v in module.state_dict().items()}


def _equal(module: nn.Module, expected: dict[str, torch.Tensor], names) -> bool:
    own = module.state_dict()
    return all(torch.equal(own[k], expected[k]) for k in names)


def test_a_checkpoint_folder_names_its_last_ckpt(tmp_path):
    """Kills checkpoint_file's checkpoint-folder branch joined as <folder>/checkpoints/last.ckpt (transfer mutant 3):
    a folder that is itself the ``checkpoints/`` folder holds last.ckpt directly."""
    folder = tmp_path / "checkpoints_copy"
    folder.mkdir()
    net = _Net()
    state = _filled(net, 0)
    torch.save({"state_dict": {"model." + k: v for k, v in state.items()}}, folder / "last.ckpt")
    assert checkpoint_file(folder) == os.path.join(str(folder), "last.ckpt")
    report = load_weights(net, folder)
    assert report.source == os.path.join(str(folder), "last.ckpt") and _equal(net, state, state)


def test_the_lightning_prefix_is_stripped_once_and_only_when_every_name_has_it(tmp_path):
    """Kills the prefix test ``any`` for ``all`` (6: a plain state dict with a child named ``model`` lost 6
    characters of every name) and replace("model.", "") for the prefix strip (8: the child's own ``model.`` went
    too)."""
    net = _Net()
    plain = _filled(net, 1)
    tensors, config, where = source_state(plain)
    assert set(tensors) == set(plain) and where == "<state dict>" and config is None
    load_weights(net, plain)
    assert _equal(net, plain, plain)
    ckpt = {"state_dict": {"model." + k: v for k, v in _filled(net, 2).items()}}
    tensors, _, _ = source_state(ckpt)
    assert sorted(tensors) == sorted(plain) and "model.weight" in tensors
    other = _Net()
    load_weights(other, ckpt)
    assert _equal(other, _filled(net, 2), plain)


def test_only_head_and_head_dot_names_are_the_head():
    """Kills _is_head as startswith("head") (10: a ``headnorm`` of another size kept silently instead of refused) and
    without ``name == "head"`` (11: a head that is one parameter named ``head`` refused instead of kept)."""
    with pytest.raises(ValueError, match=r"of another shape: \['headnorm.weight \(4,\) \(source \(3,\)\)'"):
        load_weights(_Net(norm=4), _filled(_Net(norm=3), 3))

    class Bare(nn.Module):
        def __init__(self, k):
            super().__init__()
            self.body = nn.Linear(2, 2)
            self.head = nn.Parameter(torch.zeros(k, 2))

    target, source = Bare(3), _filled(Bare(1), 4)
    report = load_weights(target, source)
    assert report.head_not_loaded == {"head": ((3, 2), (1, 2))} and report.loaded == ["body.weight", "body.bias"]
    assert torch.equal(target.body.weight, source["body.weight"]) and torch.equal(target.head, torch.zeros(3, 2))


def test_a_head_tensor_absent_from_the_source_keeps_its_value():
    """Kills the head test ``theirs is not None and`` (16: a head bias the source lacks was looked up, KeyError)."""
    source = _filled(_Net(head_bias=False), 5)
    net = _Net()
    bias = net.head.bias.detach().clone()
    report = load_weights(net, source)
    assert report.head_not_loaded == {"head.bias": ((2,), None)}
    assert torch.equal(net.head.bias, bias) and _equal(net, source, source)
    assert "head.bias (2,) (source absent)" in report.summary()


def test_the_refusal_names_a_config_field_either_side_lacks():
    """Kills the differing fields over set & set (20: a field one configuration lacks went unnamed)."""
    source = {"state_dict": {"model." + k: v for k, v in _filled(_Net(norm=4), 6).items()},
              "hyper_parameters": {"model": {"k": 2, "norm": 4, "extra": True}}}
    with pytest.raises(ValueError, match=r"differ in extra \(source True, this model None\), norm \(source 4, this "
                                         r"model 3\)"):
        load_weights(_Net(norm=3), source)


def test_freeze_names_a_module_or_a_parameter_exactly():
    """Kills the part match startswith(part) (25: ``enc`` froze ``encoder`` too) and without ``n == part`` (26: a
    parameter's own name named nothing)."""
    net = _Net()
    assert freeze_parameters(net, "enc") == ["enc.weight", "enc.bias"]
    assert [n for n, p in net.named_parameters() if not p.requires_grad] == ["enc.weight", "enc.bias"]
    other = _Net()
    assert freeze_parameters(other, ["head.weight", "model"]) == ["model.weight", "model.bias", "head.weight"]
    assert other.head.bias.requires_grad and not other.head.weight.requires_grad


def test_a_shorthand_that_agrees_with_its_long_form_is_taken():
    """Kills the --freeze refusal without ``train.freeze != freeze`` (42: ``--freeze ssm --train.freeze ssm`` was
    refused as disagreeing)."""
    from ssmkit.train import TrainConfig
    from ssmkit.train.commands import transfer_options
    train = transfer_options(TrainConfig(freeze="ssm", init_from="runs/a"), "runs/a", "ssm")
    assert (train.freeze, train.init_from) == ("ssm", "runs/a")
    with pytest.raises(ValueError, match="disagree"):
        transfer_options(TrainConfig(freeze="ssm"), None, "backbone")


@pytest.mark.filterwarnings("ignore:Checkpoint directory")
def test_a_resumed_fine_tuned_run_counts_its_trainable_parameters_and_reads_no_source(tmp_path, capsys):
    """Kills the load on resume too (30: the source was read again, so a resume failed once it was gone, and the
    "initialised from" line was said again) and trainable_parameters as every parameter (37). The source is a
    ``torch.save(state_dict)`` file; the trainable count is the head's own numel."""
    pytest.importorskip("lightning")
    from ssmkit.data import get_task
    from ssmkit.models import SequenceModel, SequenceModelConfig
    from ssmkit.train import TrainConfig, fit
    config = SequenceModelConfig(d_input=2, d_model=8, n_layers=1, layer="s4d", layer_options={"d_state": 4},
                                 d_output=1, head="regress")
    torch.manual_seed(0)
    source = SequenceModel.from_config(config)
    path = tmp_path / "source.pt"
    torch.save(source.state_dict(), path)
    train = get_task("adding", length=8, n_train=32, n_val=8, n_test=8).splits()["train"].tensors
    base = {"batch_size": 16, "warmup_steps": 0, "val_every": 0, "checkpoint_every": 0, "lr_floor": 1.0,
            "init_from": str(path), "freeze": "backbone"}
    out = tmp_path / "run"
    first = fit(config, TrainConfig(max_steps=2, **base), tuple(train), None, None, out, progress=False)
    assert first["trainable_parameters"] == 8 + 1  # head.weight (1, 8) and head.bias (1,)
    assert f"initialised from {path}: loaded" in capsys.readouterr().err
    os.remove(path)
    second = fit(config, TrainConfig(max_steps=4, **base), tuple(train), None, None, out, resume=True,
                 progress=False)
    assert second["steps"] == 4 and second["trainable_parameters"] == 9
    assert "initialised from" not in capsys.readouterr().err


def test_train_config_keeps_init_from_as_a_plain_string():
    """Kills the os.fspath conversion dropped (config mutant 37: a pathlib.Path stayed a Path in train.json's
    configuration, which JSON cannot hold)."""
    import json
    import pathlib
    from ssmkit.train import TrainConfig
    cfg = TrainConfig(init_from=pathlib.Path("runs") / "a")
    assert type(cfg.init_from) is str and cfg.init_from == os.path.join("runs", "a")
    assert json.loads(json.dumps(cfg.to_dict()))["init_from"] == cfg.init_from


# ------------------------------------------------------------------------------------------------------------------
# analysis/onnx_sequence.py's lengths, eagerly through SequenceFunction (what the graph computes), float64


def _converted(model):
    from ssmkit.analysis.onnx_sequence import _replace_bidirectional_layers, _traceable_masks, real_sequence_model
    return _traceable_masks(_replace_bidirectional_layers(real_sequence_model(model), chunk_size=4))


def test_a_bare_bidirectional_mega_skips_the_padded_keys_beyond_its_chunk():
    """Kills the mask branch of a bare bidirectional layer dropped (onnx mutant 78: RealBidirectionalSequence reads
    zeros either way, but Mega attended the padded keys; the examples had length 4 = Mega's chunk, whose padded keys
    lie in other chunks). Length 6 of L = 11, chunks of 4: each item's outputs are its unpadded sequence's."""
    from ssmkit.analysis.onnx_sequence import SequenceFunction
    from ssmkit.layers import build
    torch.manual_seed(5)
    layer = build("mega", d_model=4, dtype=F64, bidirectional=True, chunk_size=4).eval()
    u = torch.randn(2, 11, 4, dtype=F64)
    padded = u.clone()
    padded[0, 6:] = float("nan")
    with torch.no_grad():
        got = SequenceFunction(_converted(layer), with_state=False, with_lengths=True)(padded, torch.tensor([6, 11]))[0]
        alone = [layer(u[:1, :6])[0][0], layer(u[1:])[0][0]]
    assert torch.allclose(got[0, :6], alone[0], rtol=0, atol=1e-12)
    assert torch.allclose(got[1], alone[1], rtol=0, atol=1e-12)


def test_a_bare_irregular_layer_reads_unit_gaps_after_each_length():
    """Kills the padding's gaps kept (onnx mutant 76: NaN gaps after an item's end made its final state NaN). S4D
    at gaps in [0.1, 3.1], lengths 5, 9 of L = 9: outputs and final state are those of the layer on u zeroed and
    the gaps set to 1 after each length (built here)."""
    from ssmkit.analysis.onnx_export import onnx_state
    from ssmkit.analysis.onnx_irregular import irregular_model
    from ssmkit.analysis.onnx_sequence import SequenceFunction
    from ssmkit.layers import build
    torch.manual_seed(5)
    layer = build("s4d", d_model=4, d_state=4, dtype=F64).eval()
    converted = irregular_model(layer)
    u, gaps = torch.randn(2, 9, 4, dtype=F64), torch.rand(2, 9, dtype=F64) * 3 + 0.1
    padded_u, padded_gaps, zeroed, unit = u.clone(), gaps.clone(), u.clone(), gaps.clone()
    padded_u[0, 5:], padded_gaps[0, 5:], zeroed[0, 5:], unit[0, 5:] = float("nan"), float("nan"), 0.0, 1.0
    function = SequenceFunction(converted, with_state=True, with_intervals=True, with_lengths=True)
    with torch.no_grad():
        y, final = function(padded_u, padded_gaps, torch.tensor([5, 9]), converted.initial_state(2))
        want, last = layer(zeroed, intervals=unit, return_state=True)
    assert torch.allclose(y[0, :5], want[0, :5], rtol=0, atol=1e-12) and torch.allclose(y[1], want[1], atol=1e-12)
    assert torch.allclose(final, torch.as_tensor(onnx_state(layer, last)[0]), rtol=0, atol=1e-12)


def test_a_causal_mega_keeps_its_state_with_lengths():
    """Kills the _MaskedMega wrap of every Mega (onnx mutant 83: a causal Mega lost its recurrent state, so a graph
    with lengths and a state could not be built). A mean-pooled causal Mega model, lengths 6, 11: the pooled answer
    of each item alone and the final state of forward(lengths=)."""
    from ssmkit.analysis.onnx_sequence import SequenceFunction, _flatten
    from ssmkit.models import SequenceModel
    torch.manual_seed(0)
    model = SequenceModel(d_input=2, d_model=4, n_layers=1, layer="mega", layer_options={"chunk_size": 4},
                          d_output=3, head="classify", pool="mean", activation="tanh", dtype=F64).eval()
    u = torch.randn(2, 11, 2, dtype=F64)
    padded = u.clone()
    padded[0, 6:] = float("nan")
    converted = _converted(model)
    with torch.no_grad():
        got, *final = SequenceFunction(converted, with_state=True, with_lengths=True)(
            padded, torch.tensor([6, 11]), *_flatten(converted.initial_state(2)))
        _, state = model(padded, model.initial_state(2), lengths=torch.tensor([6, 11]), return_state=True)
        alone = [model(u[:1, :6])[0][0], model(u[1:])[0][0]]
    assert all(torch.allclose(got[i], alone[i], rtol=0, atol=1e-12) for i in range(2))
    want = _flatten(state)
    assert len(final) == len(want) and all(torch.allclose(a, b, rtol=0, atol=1e-12) for a, b in zip(final, want))


# ------------------------------------------------------------------------------------------------------------------
# layers/ema.py at irregular gaps: a float64 numpy loop of the EMA's modes, h ← q^τ h + (1 − q^τ)(β/δ) u,
# y = Σ (γ/√N) h + D u, q = 1 − αδ (Ma et al. 2022, arXiv:2209.10655, eq. 2 held over τ periods)


def _ema(seed: int = 3):
    from ssmkit.layers import build
    torch.manual_seed(seed)
    layer = build("ema", d_model=2, d_state=3, dtype=F64)
    with torch.no_grad():
        layer.logit_alpha.copy_(torch.linspace(-4.0, 2.0, 6, dtype=F64).reshape(1, 2, 3))
        layer.logit_delta.copy_(torch.linspace(1.0, -1.5, 6, dtype=F64).reshape(1, 2, 3))
        layer.D.copy_(torch.tensor([0.5, -0.3], dtype=F64))
    return layer


def _ema_reference(layer, u, tau, h0):
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    alpha, delta = sig(layer.logit_alpha[0].detach().numpy()), sig(layer.logit_delta[0].detach().numpy())
    q, V = 1.0 - alpha * delta, layer.beta[0].detach().numpy() / delta
    C, D = layer.gamma[0].detach().numpy() / math.sqrt(q.shape[1]), layer.D.detach().numpy()
    h, ys = h0.numpy().copy(), []
    for t in range(u.shape[1]):
        P = q[None] ** tau[:, t, None, None].numpy()
        h = P * h + (1.0 - P) * V[None] * u[:, t, :, None].numpy()
        ys.append((h * C[None]).sum(-1) + D * u[:, t].numpy())
    return np.stack(ys, 1), h


def test_the_emas_fallback_scan_starts_from_the_given_state(monkeypatch):
    """Kills the state dropped on the native backend's fallback (ema mutant 106: where the C kernel is not taken,
    the chunks started from rest). The kernel refused (prefer_native False, as off the CPU or while exporting)."""
    import ssmkit.layers.ema as ema_module
    import ssmkit.ops as ops
    monkeypatch.setattr(ema_module, "prefer_native", lambda op, x: False)
    layer = _ema()
    g = torch.Generator().manual_seed(4)
    u, h0 = torch.randn(2, 7, 2, generator=g, dtype=F64), torch.randn(2, 2, 3, generator=g, dtype=F64)
    tau = torch.rand(2, 7, generator=g, dtype=F64) * 5 + 0.05
    want_y, want_h = _ema_reference(layer, u, tau, h0)
    with torch.no_grad(), ops.use_backend("native"):
        y, h = layer(u, h0, intervals=tau)
    assert np.allclose(y.numpy(), want_y, rtol=1e-12, atol=1e-13) and np.allclose(h.numpy(), want_h, rtol=1e-12)


def test_the_emas_continuous_system_samples_to_its_recurrence():
    """Kills EMA.continuous returning w = −β/δ for B (ema mutant 107; B = z w). ZOH over one period from
    (Λ, B, Δ = 1): e^Λ = 1 − αδ and (e^Λ − 1) B/Λ = αβ, the EMA's own coefficients."""
    layer = _ema()
    Lam, B, dt = layer.continuous()
    sig = torch.sigmoid
    alpha, delta, beta = sig(layer.logit_alpha[0]).detach(), sig(layer.logit_delta[0]).detach(), layer.beta[0].detach()
    assert torch.equal(dt, torch.ones(2, dtype=dt.dtype))
    assert torch.allclose(torch.exp(Lam.real), 1 - alpha * delta, rtol=1e-13)
    assert torch.allclose((torch.exp(Lam.real) - 1) * B.real / Lam.real, alpha * beta, rtol=1e-12)
    assert torch.equal(Lam.imag, torch.zeros_like(Lam.imag)) and torch.equal(B.imag, torch.zeros_like(B.imag))


def test_bank_ratio_unchecked_returns_the_state_only_when_asked():
    """Kills bank_ratio_unchecked returning the final state whatever return_state says (bank mutant 131). Checked
    against the numpy loop above with z = log q, w = −β/δ, C = γ/√N from the EMA's parameters, from rest."""
    from ssmkit.ops.native.gate import prefer_native
    from ssmkit.ops.native.irregular_bank import bank_ratio_unchecked
    layer = _ema(5)
    g = torch.Generator().manual_seed(6)
    u, tau = torch.randn(2, 5, 2, generator=g, dtype=F64), torch.rand(2, 5, generator=g, dtype=F64) * 4 + 0.1
    if not prefer_native("bank_irregular", u):
        pytest.skip("the bank's C kernel is not built here")
    z, w, C = layer._irregular_modes()
    want_y, want_h = _ema_reference(layer, u, tau, torch.zeros(2, 2, 3, dtype=F64))
    with torch.no_grad():
        y, none = bank_ratio_unchecked(u, z, w, C, tau, layer.D, None, False)
        y2, h = bank_ratio_unchecked(u, z, w, C, tau, layer.D, None, True)
    assert none is None and np.allclose(y.numpy(), want_y, rtol=1e-12, atol=1e-13) and torch.equal(y, y2)
    assert np.allclose(h.numpy(), want_h, rtol=1e-12, atol=1e-14)
