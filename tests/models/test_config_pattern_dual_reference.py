"""The model configuration, the layer-pattern grammar and the dual-encoder pieces against their documented contracts
(docs/design.md, "Models" and "Pair tasks"; the modules' docstrings): a config with every field off its default
round-trips through dicts, JSON, YAML and files of each suffix; every refusal names its argument; interleave's
patterns are written out by hand; the pair features, masked pooling and the head (LRA retrieval's dual encoder,
arXiv 2011.04006) against float64 loops written here (probe 38)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import re
import sys

import pytest
import torch

from ssmkit.layers import registry
from ssmkit.layers.checks import UnknownOptionError
from ssmkit.models.config import SequenceModelConfig
from ssmkit.models.dual import DualEncoderHead, masked_last, masked_mean, pair_features
from ssmkit.models.pattern import check_layer_options, check_pattern, interleave, options_per_block

FIELDS = ["d_input", "d_model", "n_layers", "layer", "d_output", "layer_options", "head", "pool", "vocab_size", "norm",
          "prenorm", "activation", "mixer_out", "dropout", "check_finite", "pair", "pad_id", "tie_embeddings",
          "final_norm", "head_bias"]


def full_config_dict() -> dict:
    """A configuration with every field off its default (as a plain dict, the documented field order)."""
    return {"d_input": 2, "d_model": 6, "n_layers": 3, "layer": ["s4d", "dss", "s4d"], "d_output": 5,
            "layer_options": {"s4d": {"d_state": 4}, "dss": {"d_state": 6}}, "head": "regress", "pool": "last",
            "vocab_size": 11, "norm": "rms", "prenorm": False, "activation": "gelu", "mixer_out": "linear",
            "dropout": 0.25, "check_finite": True, "pair": True, "pad_id": 0, "tie_embeddings": True,
            "final_norm": "rms", "head_bias": False}


def test_config_fields_and_documented_defaults():
    assert [f.name for f in dataclasses.fields(SequenceModelConfig)] == FIELDS
    config = SequenceModelConfig(d_input=1, d_model=8, n_layers=2, layer="s4d", d_output=3)
    assert config.to_dict() == {"d_input": 1, "d_model": 8, "n_layers": 2, "layer": "s4d", "d_output": 3,
                                "layer_options": {}, "head": "classify", "pool": "mean", "vocab_size": None,
                                "norm": "layer", "prenorm": True, "activation": "auto", "mixer_out": "auto",
                                "dropout": 0.0, "check_finite": False, "pair": False, "pad_id": None,
                                "tie_embeddings": False, "final_norm": "auto",
                                "head_bias": True}


def test_config_round_trips_through_dict_json_and_yaml():
    data = full_config_dict()
    config = SequenceModelConfig(**data)
    assert config.to_dict() == data and list(config.to_dict()) == FIELDS
    assert SequenceModelConfig.from_dict(data) == config
    assert json.loads(config.to_json()) == data
    assert SequenceModelConfig.from_json(config.to_json()) == config
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(config.to_yaml()) == data
    keys = [line.split(":")[0] for line in config.to_yaml().splitlines() if not line.startswith((" ", "-"))]
    assert keys == FIELDS  # not sorted: the field order
    assert SequenceModelConfig.from_yaml(config.to_yaml()) == config


@pytest.mark.parametrize("suffix", [".json", ".JSON", ".yaml", ".yml", ".YML"])
def test_config_save_and_load_by_suffix(tmp_path, suffix):
    config = SequenceModelConfig(**full_config_dict())
    path = tmp_path / f"model{suffix}"
    config.save(path)
    text = path.read_text()
    if suffix.lower() == ".json":
        assert json.loads(text) == full_config_dict()
    else:
        assert text.startswith("d_input: 2\n")  # YAML, not JSON
    assert SequenceModelConfig.load(path) == config
    assert SequenceModelConfig.load(str(path)) == config


@pytest.mark.parametrize("name", ["model.txt", "model", "model.json.bak"])
def test_config_files_need_a_known_suffix(tmp_path, name):
    config = SequenceModelConfig(d_input=1, d_model=8, n_layers=1, layer="s4d", d_output=2)
    path = tmp_path / name
    want = f"a configuration file must end in .json, .yaml or .yml; got {str(path)!r}"
    with pytest.raises(ValueError, match=re.escape(want)):
        config.save(path)
    path.write_text(config.to_json())
    with pytest.raises(ValueError, match=re.escape(want)):
        SequenceModelConfig.load(path)


def test_config_from_dict_names_unknown_and_missing_keys():
    data = full_config_dict()
    with pytest.raises(ValueError, match=re.escape(f"unknown SequenceModelConfig keys ['n_layer', 'zeta']; valid keys: "
                                                   f"{FIELDS}")):
        SequenceModelConfig.from_dict({**data, "zeta": 1, "n_layer": 2})
    for missing in (["d_input"], ["n_layers", "d_output"], ["d_input", "d_model", "n_layers", "layer", "d_output"]):
        partial = {k: v for k, v in data.items() if k not in missing}
        with pytest.raises(ValueError, match=re.escape(f"SequenceModelConfig needs the keys {missing}")):
            SequenceModelConfig.from_dict(partial)
    for bad in ([("layer", "s4d")], "d_input: 1", None):
        with pytest.raises(ValueError, match=f"must be read from a dict; got {type(bad).__name__}"):
            SequenceModelConfig.from_dict(bad)
    # only the required keys: the defaults; layer_options None or absent: {}, a copy of what was given
    required = {k: data[k] for k in FIELDS[:5]}
    assert SequenceModelConfig.from_dict(required) == SequenceModelConfig(**required)
    assert SequenceModelConfig.from_dict({**required, "layer_options": None}).layer_options == {}
    options = {"s4d": {"d_state": 4}}
    config = SequenceModelConfig.from_dict({**required, "layer_options": options})
    assert config.layer_options == options and config.layer_options is not options


def test_yaml_without_pyyaml_says_how_to_install_it(monkeypatch):
    config = SequenceModelConfig(d_input=1, d_model=8, n_layers=1, layer="s4d", d_output=2)
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml raises ImportError
    with pytest.raises(ImportError, match=re.escape("pip install pyyaml")):
        config.to_yaml()
    assert SequenceModelConfig.from_json(config.to_json()) == config  # JSON needs nothing


@pytest.mark.parametrize("n_layers, every, offset, want", [
    (6, 3, None, "AAIAAI"),  # Griffin: two recurrent blocks, then attention
    (8, 8, None, "AAAAAAAI"),  # one attention block in eight, last (Jamba-v0.1 has it at offset 4)
    (7, 3, None, "AAIAAIA"),
    (7, 3, 0, "IAAIAAI"),
    (7, 3, 1, "AIAAIAA"),
    (5, 2, None, "AIAIA"),
    (5, 2, 0, "IAIAI"),
    (4, 1, None, "IIII"),
    (4, 1, 0, "IIII"),
    (2, 5, None, "AA"),  # a period longer than the model
    (2, 5, 1, "AI"),
    (1, 1, None, "I"),
])
def test_interleave_patterns_written_out(n_layers, every, offset, want):
    """Block i is the inserted layer when i % every == offset (offset None: every − 1)."""
    pattern = interleave("s4d", "dss", n_layers, every, offset)
    assert pattern == [{"A": "s4d", "I": "dss"}[c] for c in want]


def test_interleave_refuses_bad_arguments_by_name():
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match=re.escape(f"n_layers must be a positive int; got {bad!r}")):
            interleave("s4d", "dss", bad, 2)
        with pytest.raises(ValueError, match=re.escape(f"every must be a positive int; got {bad!r}")):
            interleave("s4d", "dss", 4, bad)
    for bad in (-1, 3, 4, True, 1.0, "0"):
        with pytest.raises(ValueError, match=re.escape(f"offset must be an int with 0 <= offset < every = 3; got "
                                                       f"{bad!r}")):
            interleave("s4d", "dss", 6, 3, bad)
    with pytest.raises(ValueError, match=re.escape("unknown layer names ['nope'] in the pattern")):
        interleave("nope", "dss", 4, 2)


def test_check_pattern_expands_one_name_and_checks_a_list():
    assert check_pattern("s4d", 3) == ["s4d", "s4d", "s4d"]
    assert check_pattern(("s4d", "dss"), 2) == ["s4d", "dss"] and isinstance(check_pattern(("s4d", "dss"), 2), list)
    for names in (["s4d"], ["s4d", "dss", "s4d"], []):
        with pytest.raises(ValueError, match=re.escape(f"a layer pattern needs one name per block: n_layers=2 names; "
                                                       f"got {len(names)}: {names}")):
            check_pattern(names, 2)
    with pytest.raises(ValueError, match=re.escape(f"unknown layer names ['transformer', 'zz'] in the pattern; "
                                                   f"registered layers: {registry.available()}")):
        check_pattern(["zz", "s4d", "transformer"], 3)
    with pytest.raises(ValueError, match="layer must be a layer name or a list of 2 layer names"):
        check_pattern({"s4d": 1, "dss": 2}, 2)


def test_options_per_block_one_name():
    options = {"d_state": 4}
    blocks = options_per_block("s4d", ["s4d"] * 3, options)
    assert blocks == [{"d_state": 4}] * 3
    blocks[0]["d_state"] = 99  # copies: neither the other blocks nor the caller's dict change
    assert blocks[1] == {"d_state": 4} and options == {"d_state": 4}
    assert options_per_block("s4d", ["s4d"] * 2, None) == [{}, {}]
    assert options_per_block("s4d", ["s4d"], {}) == [{}]
    for key in ("d_model", "device", "dtype"):
        with pytest.raises(ValueError, match=re.escape(f"layer_options must not set {key} (for s4d)")):
            options_per_block("s4d", ["s4d"], {key: 1})
    with pytest.raises(UnknownOptionError, match=re.escape("layer 's4d' has no option(s) ['d_stat', 'x']; its "
                                                           "options are [")):
        options_per_block("s4d", ["s4d"], {"x": 1, "d_stat": 4})
    for bad in ([("d_state", 4)], "d_state=4"):
        with pytest.raises(ValueError, match=re.escape(f"layer_options must be a dict of the layer's options, or None; "
                                                       f"got {bad!r}")):
            options_per_block("s4d", ["s4d"], bad)


def test_options_per_block_a_pattern():
    names = ["s4d", "dss", "s4d", "lru"]
    options = {"s4d": {"d_state": 4}, "dss": {"d_state": 6}}
    blocks = options_per_block(names, names, options)
    assert blocks == [{"d_state": 4}, {"d_state": 6}, {"d_state": 4}, {}]  # lru: its defaults
    blocks[0]["d_state"] = 99
    assert blocks[2] == {"d_state": 4} and options["s4d"] == {"d_state": 4}
    with pytest.raises(ValueError, match=re.escape("['attention', 'mamba'] are not in the pattern ['dss', 'lru', "
                                                   "'s4d']")):
        options_per_block(names, names, {"mamba": {}, "s4d": {}, "attention": {}})
    with pytest.raises(ValueError, match=re.escape("layer_options must not set dtype (for dss)")):
        options_per_block(names, names, {"dss": {"dtype": torch.float64}})
    with pytest.raises(UnknownOptionError, match=re.escape("layer 'lru' has no option(s) ['d_stat']")):
        options_per_block(names, names, {"lru": {"d_stat": 4}})


def test_check_layer_options_lists_the_constructor_options():
    valid = [k for k in inspect.signature(registry.layer_class("s4d").__init__).parameters
             if k not in ("self", "d_model", "device", "dtype")]
    assert "d_state" in valid and "bidirectional" in valid
    check_layer_options("s4d", {k: None for k in valid})  # every option of the constructor is accepted
    check_layer_options("s4d", {})
    with pytest.raises(UnknownOptionError, match=re.escape(f"layer 's4d' has no option(s) ['d_model_']; its options "
                                                           f"are {valid}")):
        check_layer_options("s4d", {"d_model_": 1})
    for key in ("self", "d_model", "device", "dtype"):  # not options: the model sets them
        with pytest.raises(UnknownOptionError):
            check_layer_options("s4d", {key: 1})


def test_check_layer_options_accepts_anything_for_a_constructor_with_var_keywords(monkeypatch):
    class Open(torch.nn.Module):
        """A layer class whose constructor takes **options (none is registered; the rule still holds)."""

        def __init__(self, d_model: int, **options: object) -> None:
            super().__init__()

    monkeypatch.setitem(registry._REGISTRY, "open_probe", Open)
    check_layer_options("open_probe", {"anything": 1, "d_stat": 2})


def pair_features_by_hand(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[a, b, a ⊙ b, a − b] for each item, element by element (arXiv 2011.04006, the LRA dual head)."""
    B, H = a.shape
    out = torch.empty(B, 4 * H, dtype=torch.float64)
    for i in range(B):
        for j in range(H):
            out[i, j] = a[i, j]
            out[i, H + j] = b[i, j]
            out[i, 2 * H + j] = a[i, j] * b[i, j]
            out[i, 3 * H + j] = a[i, j] - b[i, j]
    return out


def test_pair_features_by_hand():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)
    assert torch.equal(pair_features(a, b), pair_features_by_hand(a, b))
    for x, y in ((a, b[:, :4]), (a, b[:2]), (a[0], b[0]), (a[None], b[None])):
        with pytest.raises(ValueError, match=re.escape(f"a and b must be two (B, H) encodings of one shape; got "
                                                       f"{tuple(x.shape)} and {tuple(y.shape)}")):
            pair_features(x, y)


def pools_by_hand(h: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean over the kept positions (zeros when none) and the features at the last kept one (the first when
    none), by loops."""
    B, L, H = h.shape
    mean, last = torch.zeros(B, H, dtype=torch.float64), torch.zeros(B, H, dtype=torch.float64)
    for i in range(B):
        kept = [t for t in range(L) if keep[i, t]]
        for t in kept:
            mean[i] += h[i, t] / len(kept)
        last[i] = h[i, kept[-1]] if kept else h[i, 0]
    return mean, last


def test_masked_pooling_by_hand():
    g = torch.Generator().manual_seed(4)
    h = torch.randn(5, 7, 3, generator=g, dtype=torch.float64)
    keep = torch.tensor([[1, 1, 1, 0, 0, 0, 0],  # trailing padding
                         [0, 0, 0, 0, 0, 0, 0],  # nothing kept
                         [0, 1, 0, 1, 1, 0, 0],  # scattered
                         [1, 1, 1, 1, 1, 1, 1],  # all
                         [0, 0, 0, 0, 0, 0, 1]], dtype=torch.bool)  # only the last
    mean, last = pools_by_hand(h, keep)
    assert torch.allclose(masked_mean(h, keep), mean, rtol=1e-14, atol=1e-15)
    assert torch.equal(masked_last(h, keep), last)
    assert torch.allclose(masked_mean(h, None), h.sum(1) / 7, rtol=1e-14, atol=0)
    assert torch.equal(masked_last(h, None), h[:, 6])
    h32 = h.float()
    assert masked_mean(h32, keep).dtype == torch.float32
    assert torch.allclose(masked_mean(h32, keep).double(), mean, rtol=1e-6, atol=1e-6)


def test_dual_encoder_head_by_hand():
    """logits = W_2 GELU(W_1 [a, b, a ⊙ b, a − b] + c_1) + c_2 with W_1: 4H → H, W_2: H → C and the exact (erf) GELU."""
    torch.manual_seed(5)
    H, C = 4, 3
    head = DualEncoderHead(H, C, dtype=torch.float64)
    assert head.hidden.weight.shape == (H, 4 * H) and head.hidden.bias.shape == (H,)
    assert head.out.weight.shape == (C, H) and head.out.bias.shape == (C,)
    assert head.hidden.weight.dtype == torch.float64
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.5 * torch.randn_like(p))
    g = torch.Generator().manual_seed(6)
    a, b = torch.randn(2, H, generator=g, dtype=torch.float64), torch.randn(2, H, generator=g, dtype=torch.float64)
    W1, c1 = head.hidden.weight.detach(), head.hidden.bias.detach()
    W2, c2 = head.out.weight.detach(), head.out.bias.detach()
    f = pair_features_by_hand(a, b)
    for i in range(2):
        z = [sum(W1[k, j] * f[i, j] for j in range(4 * H)) + c1[k] for k in range(H)]
        hidden = [0.5 * float(v) * (1 + math.erf(float(v) / math.sqrt(2))) for v in z]
        want = [sum(W2[c, k] * hidden[k] for k in range(H)) + c2[c] for c in range(C)]
        assert torch.allclose(head(a, b)[i], torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-13)
    # the order of the two documents matters (a − b is not symmetric)
    assert not torch.allclose(head(a, b), head(b, a))


def test_dual_encoder_head_refuses_bad_sizes_by_name():
    for bad in (0, -2, True, 4.0):
        with pytest.raises(ValueError, match=re.escape(f"d_model must be a positive int; got {bad!r}")):
            DualEncoderHead(bad, 3)
        with pytest.raises(ValueError, match=re.escape(f"d_output must be a positive int; got {bad!r}")):
            DualEncoderHead(4, bad)
