"""Probe (2026-12-07): a researcher's day with an official Mamba / Mamba-2 checkpoint loaded by ``load_mamba``.

The checkpoints are small random official-format ones (both key styles) built by
tests/models/test_official_reference.py, whose float64 time loop of the official forward (``reference_logits``, written from the official equations, no ssmkit
layer in it) is the reference throughout. What was probed:

- fine-tuning from Python (``param_groups`` + AdamW, a few steps), then ``save_mamba`` and ``load_mamba`` again. An
  untied model's head bias (SequenceModel's ``nn.Linear``; the official ``lm_head`` has none) was a trainable
  parameter, so after any step ``save_mamba`` refused the model ("non-zero bias"): the loaded model is built with
  ``head_bias=False`` now (a config field, so a run rebuilt from ``model.config`` has no bias either). The
  optimiser groups: A_log and the Δ bias without weight decay, the tied embedding counted once;
- a LoRA adapter put on ``in_proj`` with ``torch.nn.utils.parametrize``: ``mamba_state_dict`` raised a bare
  ``KeyError: 'in_proj.parametrizations.weight.original'``; it exports the merged weight W + B A now;
- ``torch.compile(model)``: ``mamba_state_dict`` / ``save_mamba`` refused the wrapper ("got OptimizedModule"), and a
  state dict with a shared prefix (``model.``, ``_orig_mod.``, ``module.``) was refused as "not an official Mamba LM";
  an ssmkit SequenceModel's own state dict given to ``load_mamba`` is named as such;
- a weights file given alone ignored the ``config.json`` beside it, so a two-group Mamba-2 loaded as one group (wrong
  logits, no error); a state dict on the meta device raised torch's ``NotImplementedError`` (``aten::equal``); an
  integer tensor was converted silently; ``device="meta"`` printed one UserWarning per tensor;
- what worked and had no test: greedy ``generate``, ``beam_search`` with one beam and ``next_tokens`` against the
  reference's argmax; bf16 / fp16 / non-contiguous checkpoint tensors; a Hugging Face config.json with its many extra
  fields; a folder with both weight files (model.safetensors is read, as Hugging Face does); ``copy.deepcopy``,
  ``torch.save(model)``, ``SequenceModel.from_config(model.config)`` + ``state_dict``; ``.double()`` of a float32 model.
"""

from __future__ import annotations

import copy
import io
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ssmkit.models import SequenceModel, load_mamba, mamba_config, mamba_state_dict, save_mamba
from ssmkit.models.beam import beam_search
from ssmkit.models.generate import next_tokens
from ssmkit.train import param_groups
from tests.models.test_official_reference import _hf_config, official_state_dict, reference_logits

F64 = torch.float64
VOCAB = 40  # the padded rows of official_state_dict
TOL64 = 1e-10  # float64 against the float64 reference


def _ids(seed: int = 1, batch: int = 2, length: int = 9) -> torch.Tensor:
    return torch.randint(0, 37, (batch, length), generator=torch.Generator().manual_seed(seed))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return float((a.detach().double() - b).abs().max() / b.abs().max())


def _logits(model, ids):
    with torch.no_grad():
        return model(ids)[0]


def _fine_tune(model: SequenceModel, ids: torch.Tensor, steps: int = 3) -> None:
    """A few AdamW steps of next-token cross-entropy with ssmkit's optimiser groups."""
    model.train()
    optimizer = torch.optim.AdamW(param_groups(model, lr=1e-2, weight_decay=0.1))
    for _ in range(steps):
        logits = model(ids[:, :-1])[0]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


# ----------------------------------------------------------------------------------------------------------------------
# fine-tuning, then the official layout again


@pytest.mark.parametrize("layer, tied", [("mamba", False), ("mamba2", False), ("mamba2", True)])
def test_a_fine_tuned_model_saves_and_loads_with_the_reference_logits(tmp_path, layer, tied):
    sd = official_state_dict(layer, "hf", N=4, tied=tied, bias=True, seed=21)
    model = load_mamba(sd, dtype=F64)
    # the official model's parameter count: an untied head adds no bias (the official lm_head has none)
    assert model.num_parameters() == sum(v.numel() for k, v in sd.items() if not (tied and k == "lm_head.weight"))
    assert "head.bias" not in model.state_dict() and model.config.head_bias is False
    ids = _ids(seed=22)
    _fine_tune(model, ids)
    exported = mamba_state_dict(model)
    assert not torch.equal(exported["backbone.layers.0.mixer.in_proj.weight"],
                           sd["backbone.layers.0.mixer.in_proj.weight"])  # the steps changed the weights
    save_mamba(model, tmp_path / "tuned")  # refused before: the trained head bias was non-zero
    again = load_mamba(tmp_path / "tuned", dtype=F64)
    assert again.config.tie_embeddings == tied
    expected = reference_logits(exported, ids)
    assert _rel(_logits(model, ids), expected) < TOL64
    assert _rel(_logits(again, ids), expected) < TOL64
    assert json.loads((tmp_path / "tuned" / "config.json").read_text()) == mamba_config(model)


def test_the_optimiser_groups_of_a_loaded_model():
    # A_log and the Δ bias: no weight decay (their marks); the norms too; the tied embedding in one group, once; D is
    # a weight like every layer's skip (a documented difference from the official _no_weight_decay: design "Probe 9")
    model = load_mamba(official_state_dict("mamba", "mamba_ssm", N=4, seed=23))
    groups = param_groups(model, lr=1e-3, weight_decay=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {g["weight_decay"]: {names[id(p)] for p in g["params"]} for g in groups}
    assert set(decay) == {0.1, 0.0}
    seen = [names[id(p)] for g in groups for p in g["params"]]
    assert len(seen) == len(set(seen)) == len(list(model.parameters()))  # each tensor once: head.weight is encoder's
    assert "encoder.weight" in decay[0.1] and not any(n.startswith("head.") for n in seen)
    for i in range(2):
        assert {f"blocks.{i}.layer.A_log", f"blocks.{i}.layer.dt_bias", f"blocks.{i}.norm.weight"} <= decay[0.0]
        assert f"blocks.{i}.layer.D" in decay[0.1]
    assert "final_norm.weight" in decay[0.0]


# ----------------------------------------------------------------------------------------------------------------------
# LoRA and torch.compile


class _LowRank(nn.Module):
    """W + B A (a LoRA update of rank r)."""

    def __init__(self, out_features: int, in_features: int, rank: int, generator: torch.Generator) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.randn(rank, in_features, generator=generator, dtype=F64) * 0.3)
        self.B = nn.Parameter(torch.randn(out_features, rank, generator=generator, dtype=F64) * 0.3)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.B @ self.A


@pytest.mark.parametrize("layer", ["mamba", "mamba2"])
def test_a_lora_adapter_is_exported_merged(tmp_path, layer):
    sd = official_state_dict(layer, "mamba_ssm", N=4, seed=24)
    model = load_mamba(sd, dtype=F64)
    g = torch.Generator().manual_seed(25)
    proj = model.blocks[1].layer.in_proj
    adapter = _LowRank(*proj.weight.shape, 2, g)
    parametrize.register_parametrization(proj, "weight", adapter)
    merged = sd["backbone.layers.1.mixer.in_proj.weight"] + adapter.B.detach() @ adapter.A.detach()
    out = mamba_state_dict(model)  # was KeyError: 'in_proj.parametrizations.weight.original'
    assert set(out) == set(sd)
    assert torch.allclose(out["backbone.layers.1.mixer.in_proj.weight"], merged, rtol=0, atol=1e-14)
    assert not out["backbone.layers.1.mixer.in_proj.weight"].requires_grad
    ids = _ids(seed=26)
    expected = reference_logits(dict(sd, **{"backbone.layers.1.mixer.in_proj.weight": merged}), ids)
    assert _rel(_logits(model, ids), expected) < TOL64
    save_mamba(model, tmp_path / "merged")
    assert _rel(_logits(load_mamba(tmp_path / "merged", dtype=F64), ids), expected) < TOL64


def test_a_compiled_model_exports_and_saves(tmp_path):
    model = load_mamba(official_state_dict("mamba2", "hf", N=4, tied=False, seed=27), dtype=F64)
    compiled = torch.compile(model)  # the wrapper only: nothing is compiled until it is called
    plain = mamba_state_dict(model, "hf")
    through = mamba_state_dict(compiled, "hf")
    assert set(through) == set(plain) and all(torch.equal(through[k], plain[k]) for k in plain)
    assert mamba_config(compiled) == mamba_config(model)
    save_mamba(compiled, tmp_path / "c")
    ids = _ids(seed=28)
    assert _rel(_logits(load_mamba(tmp_path / "c", dtype=F64), ids), reference_logits(plain, ids)) < TOL64


@pytest.mark.parametrize("prefix", ["model.", "_orig_mod.", "module._orig_mod."])
def test_a_shared_key_prefix_is_dropped(prefix):
    sd = official_state_dict("mamba", "hf", N=4, tied=False, seed=29)
    ids = _ids(seed=30)
    model = load_mamba({prefix + k: v for k, v in sd.items()}, dtype=F64)
    assert _rel(_logits(model, ids), reference_logits(sd, ids)) < TOL64


def test_a_partly_prefixed_or_ssmkit_state_dict_is_refused_by_name():
    sd = official_state_dict("mamba", "mamba_ssm", N=4, seed=31)
    half = {("model." + k if "layers.1" in k else k): v for k, v in sd.items()}
    with pytest.raises(ValueError, match="unexpected key 'model.backbone.layers.1"):
        load_mamba(half)
    most = {(k if k == "backbone.norm_f.weight" else "model." + k): v for k, v in sd.items()}
    with pytest.raises(ValueError, match="not an official Mamba LM state dict"):  # no prefix that every key shares
        load_mamba(most)
    ours = load_mamba(sd).state_dict()
    for state in (ours, {"_orig_mod." + k: v for k, v in ours.items()}):
        with pytest.raises(ValueError, match="ssmkit SequenceModel's state dict.*from_config"):
            load_mamba(state)


# ----------------------------------------------------------------------------------------------------------------------
# files and odd tensors


def test_a_weights_file_reads_the_config_json_beside_it(tmp_path):
    # two groups: the shapes alone read one group (a different model); the folder's config.json says two
    sd = official_state_dict("mamba2", "hf", N=4, G=2, tied=False, seed=32)
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(_hf_config("mamba2", N=4, G=2, tied=False)))
    torch.save(sd, folder / "pytorch_model.bin")
    ids = _ids(seed=33)
    expected = reference_logits(sd, ids, ngroups=2)
    assert _rel(reference_logits(sd, ids, ngroups=1), expected) > 1e-3
    assert _rel(_logits(load_mamba(folder / "pytorch_model.bin", dtype=F64), ids), expected) < TOL64
    assert _rel(_logits(load_mamba(str(folder / "pytorch_model.bin"), dtype=F64), ids), expected) < TOL64


def test_a_hugging_face_folder_with_extra_fields_and_both_weight_files(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch", reason="the safetensors package is not installed")
    config = _hf_config("mamba", N=4, R=2, tied=False)
    config.update({"transformers_version": "4.44.0", "torch_dtype": "bfloat16", "bos_token_id": 0, "eos_token_id": 0,
                   "pad_token_id": 0, "use_cache": True, "initializer_range": 0.1, "hidden_act": "silu",
                   "rescale_prenorm_residual": False, "time_step_scale": 1.0, "time_step_min": 0.001,
                   "time_step_max": 0.1, "time_step_floor": 1e-4, "time_step_init_scheme": "random",
                   "intermediate_size": 32, "n_layer": 2, "use_mambapy": False})
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    stale = official_state_dict("mamba", "hf", N=4, R=2, tied=False, seed=34)
    fresh = official_state_dict("mamba", "hf", N=4, R=2, tied=False, seed=35)
    torch.save(stale, folder / "pytorch_model.bin")
    safetensors_torch.save_file(fresh, str(folder / "model.safetensors"))
    ids = _ids(seed=36)
    # model.safetensors is read, as Hugging Face's from_pretrained prefers it
    assert _rel(_logits(load_mamba(folder, dtype=F64), ids), reference_logits(fresh, ids)) < TOL64


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_half_precision_and_non_contiguous_checkpoint_tensors(low):
    sd = official_state_dict("mamba2", "mamba_ssm", N=4, bias=True, tied=False, seed=37)
    rounded = {k: v.to(low) for k, v in sd.items()}
    odd = {k: (v.t().contiguous().t() if v.dim() == 2 else v) for k, v in rounded.items()}  # column-major copies
    assert not odd["backbone.layers.0.mixer.in_proj.weight"].is_contiguous()
    ids = _ids(seed=38)
    expected = reference_logits({k: v.double() for k, v in rounded.items()}, ids)  # the rounded weights exactly
    assert _rel(_logits(load_mamba(odd, dtype=F64), ids), expected) < TOL64


def test_tensors_without_weights_are_refused_by_name(tmp_path):
    sd = official_state_dict("mamba", "mamba_ssm", N=4, seed=39)
    with pytest.raises(ValueError, match="meta device"):  # was torch's NotImplementedError (aten::equal)
        load_mamba({k: v.to("meta") for k, v in sd.items()})
    with pytest.raises(ValueError, match=r"mixer\.D is torch\.int8.*floating"):  # was converted silently
        load_mamba(dict(sd, **{"backbone.layers.0.mixer.D": torch.ones(32, dtype=torch.int8)}))
    with pytest.raises(ValueError, match="no such file or folder"):
        load_mamba(tmp_path / "missing")


def test_device_meta_builds_the_structure_without_warnings():
    sd = official_state_dict("mamba", "hf", N=4, tied=False, seed=40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one "copying ... to a meta parameter is a no-op" warning per tensor before
        model = load_mamba(sd, device="meta")
    assert all(t.is_meta for t in model.state_dict().values())
    assert model.num_parameters() == sum(v.numel() for v in sd.values())


# ----------------------------------------------------------------------------------------------------------------------
# decoding and the usual module round trips


@pytest.mark.parametrize("layer", ["mamba", "mamba2"])
def test_decoding_follows_the_reference_argmax(layer):
    sd = official_state_dict(layer, "mamba_ssm", N=4, seed=41)
    model = load_mamba(sd, dtype=F64)
    prompt = _ids(seed=42, length=3)
    greedy = model.generate(prompt, max_new_tokens=5, temperature=0)
    reference = reference_logits(sd, greedy[:, :-1])  # (B, 7, V)
    assert torch.equal(greedy[:, 3:], reference[:, 2:].argmax(-1))
    beams = beam_search(model, prompt, max_new_tokens=5, num_beams=1)
    assert all(torch.equal(a, b) for a, b in zip(beams.tokens, greedy))
    assert torch.equal(next_tokens(_logits(model, prompt)[:, -1], temperature=0),
                       reference_logits(sd, prompt)[:, -1].argmax(-1))
    # the padding rows (ids 37 ... 39 past the tokenizer's 37) are ordinary ids and logits columns, as officially
    padded = torch.tensor([[38, 39, 37]])
    assert _rel(_logits(model, padded), reference_logits(sd, padded)) < TOL64
    with pytest.raises(ValueError, match=r"\[0, 40\)"):
        model(torch.tensor([[VOCAB]]))


def test_module_round_trips_keep_the_reference_logits():
    sd = official_state_dict("mamba2", "hf", N=4, bias=True, tied=False, seed=43)
    ids = _ids(seed=44)
    expected = reference_logits(sd, ids)
    model = load_mamba(sd, dtype=F64)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    rebuilt = SequenceModel.from_config(model.config, dtype=F64)
    rebuilt.load_state_dict(model.state_dict(), strict=True)  # the config rebuilds the bias-free head
    for twin in (copy.deepcopy(model), torch.load(buffer, weights_only=False), rebuilt.eval()):
        assert _rel(_logits(twin, ids), expected) < TOL64
    single = load_mamba(sd)  # float32, then .double(): float32 round-off of the weights only
    assert _rel(_logits(single.double(), ids), expected) < 1e-5


def test_init_from_an_official_checkpoint_points_to_load_mamba(tmp_path):
    """``load_weights`` (``--init-from``) with an official folder said "holding none of last.ckpt", and with an official
    state dict listed every tensor as absent: both now name the file's kind and ``load_mamba``."""
    from ssmkit.train import load_weights

    sd = official_state_dict("mamba", "mamba_ssm", N=4)
    folder = tmp_path / "official"
    folder.mkdir()
    torch.save(sd, folder / "pytorch_model.bin")
    model = load_mamba(sd)
    with pytest.raises(ValueError, match="holds pytorch_model.bin, an official .* load it with ssmkit.models.load_mamba"):
        load_weights(model, folder)
    for source in (sd, folder / "pytorch_model.bin", {f"model.{k}": v for k, v in sd.items()}):
        with pytest.raises(ValueError, match="is an official Mamba LM state dict .* ssmkit.models.load_mamba"):
            load_weights(model, source)


def test_from_config_takes_the_config_dict():
    """``SequenceModel.from_config(model.config.to_dict())`` raised AttributeError ('dict' has no 'to_dict')."""
    model = load_mamba(official_state_dict("mamba2", "hf", N=4, tied=False), dtype=F64)
    again = SequenceModel.from_config(model.config.to_dict(), dtype=F64)
    assert again.config == model.config and again.head.bias is None
    with pytest.raises(ValueError, match="config must be a SequenceModelConfig or its dict; got str"):
        SequenceModel.from_config("model.yaml")


def test_fine_tuning_by_fit_from_the_loaded_weights_and_back_to_the_official_layout(tmp_path):
    """The README's fine-tuning route: ``fit(model.config, TrainConfig(init_from=<the loaded state dict's file>))``
    starts from the checkpoint's weights (two AdamW steps of lr 1e-3 move no weight by more than ~2e-3 from them), and
    the run's weights go back to the official layout, whose reference logits are the tuned model's."""
    pytest.importorskip("lightning")
    from ssmkit.train import TrainConfig, fit, load_weights

    sd = official_state_dict("mamba2", "mamba_ssm", N=4, tied=False, seed=61)
    model = load_mamba(sd, dtype=F64)
    torch.save(model.state_dict(), tmp_path / "init.pt")
    ids = torch.randint(0, 37, (8, 10), generator=torch.Generator().manual_seed(62))
    data = (ids[:, :-1], ids[:, 1:])
    config = TrainConfig(max_steps=2, batch_size=4, lr=1e-3, warmup_steps=0, val_every=1, precision="64",
                         init_from=str(tmp_path / "init.pt"), seed=0)
    history = fit(model.config, config, train=data, val=data, test=None, out_dir=tmp_path / "run", progress=False)
    assert history["init_from"] == str(tmp_path / "init.pt")
    tuned = SequenceModel.from_config(model.config, dtype=F64)
    load_weights(tuned, tmp_path / "run")
    assert not torch.equal(tuned.blocks[0].layer.in_proj.weight, model.blocks[0].layer.in_proj.weight)  # it trained
    moved = max(float((a - b).abs().max()) for a, b in zip(tuned.state_dict().values(), model.state_dict().values()))
    assert moved < 2.5e-3  # from the checkpoint, not from a fresh draw
    save_mamba(tuned, tmp_path / "out")
    saved = torch.load(tmp_path / "out" / "pytorch_model.bin", weights_only=True)
    assert _rel(_logits(tuned.eval(), ids), reference_logits(saved, ids)) < TOL64
