"""SequenceModels from the official Mamba and Mamba-2 language-model checkpoints, and back.

Mamba (Gu & Dao, arXiv 2312.00752) and Mamba-2 (Dao & Gu, arXiv 2405.21060) publish their language models
(state-spaces/mamba-130m ... mamba-2.8b, mamba2-130m ... mamba2-2.7b) as the state dict of ``mamba_ssm``'s
``MambaLMHeadModel``; Hugging Face transformers publishes the same weights as ``MambaForCausalLM`` and
``Mamba2ForCausalLM``. Each is one network, with ids in, logits out:

    h_0 = E[ids];   h_{l+1} = h_l + mixer_l(RMSNorm_l(h_l));   logits = RMSNorm_f(h_n) Wᵀ

with RMSNorm(x) = x / √(mean(x²) + 1e-5) · w and W = E when tied. The official code adds the residual before the next
block's norm ("Add -> Norm -> Mixer", fused), which is this sum. It is the SequenceModel with ``head="lm"``,
``pool=None``, ``norm="rms"``, ``prenorm=True``, ``final_norm="rms"``, no block activation or output projection,
the ``"mamba"`` or ``"mamba2"`` layer and, untied, ``head_bias=False`` (the official ``lm_head`` has no bias). Its
parameters are the official mixer's, module for module: the Δ bias of Mamba-1 is ``dt_bias`` here, its
``dt_proj.bias`` there, and the depthwise convolution's weight is (C, K) here, (C, 1, K) there. The vocabulary is the embedding's rows: the official models pad it to a multiple of 8 (50 277
tokens -> 50 280 rows), and the padding rows are kept, so logits have those columns too.

    model = ssmkit.models.load_mamba("path/to/mamba-130m")     # a folder: config.json + pytorch_model.bin
    logits, _ = model(ids)                                     # ids (B, L) from the GPT-NeoX tokenizer
    ssmkit.models.save_mamba(model, "path/to/out")             # the official layout again, for mamba_ssm

Not converted (refused by name): blocks with an MLP (``d_intermediate > 0``) or attention layers (the hybrids),
LayerNorm models (``rms_norm=False``), Mamba-3 mixers, a finite Δ limit, an ε other than 1e-5, a Mamba-2 ``d_ssm``
smaller than its inner width. ``residual_in_fp32`` needs nothing: ssmkit's layers run in float32 or float64.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Mapping

import torch

from ssmkit.files import atomic_write, write_json
from ssmkit.models.sequence import SequenceModel

STYLES = ("mamba_ssm", "hf")
_EMBEDDING = {"mamba_ssm": "backbone.embedding.weight", "hf": "backbone.embeddings.weight"}
_LAYER = re.compile(r"^backbone\.layers\.(\d+)\.(.+)$")
EPS = 1e-5  # the block and final RMSNorms' ε, as ssmkit's norms (models.block.NORM_EPS)

# official mixer key -> ssmkit layer key (conv weights are reshaped on the way)
_MAMBA_KEYS = {"in_proj.weight": "in_proj.weight", "in_proj.bias": "in_proj.bias", "conv1d.weight": "conv1d.weight",
               "conv1d.bias": "conv1d.bias", "x_proj.weight": "x_proj.weight", "dt_proj.weight": "dt_proj.weight",
               "dt_proj.bias": "dt_bias", "A_log": "A_log", "D": "D", "out_proj.weight": "out_proj.weight",
               "out_proj.bias": "out_proj.bias"}
_MAMBA2_KEYS = {"in_proj.weight": "in_proj.weight", "in_proj.bias": "in_proj.bias", "conv1d.weight": "conv.weight",
                "conv1d.bias": "conv.bias", "dt_bias": "dt_bias", "A_log": "A_log", "D": "D",
                "norm.weight": "norm.weight", "out_proj.weight": "out_proj.weight", "out_proj.bias": "out_proj.bias"}
_KEYS = {"mamba": _MAMBA_KEYS, "mamba2": _MAMBA2_KEYS}
_CONV = {"mamba": "conv1d.weight", "mamba2": "conv.weight"}


def load_mamba(source: Mapping[str, torch.Tensor] | str | os.PathLike, config: Mapping[str, Any] | None = None, *,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> SequenceModel:
    """The SequenceModel of an official Mamba or Mamba-2 language model (module docstring), in eval mode.

    Args:
        source: the model's state dict (``mamba_ssm``'s ``MambaLMHeadModel`` keys, or Hugging Face's
            ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` keys, told apart by the embedding's name; its tensors as the
            official modules hold them: the embedding (V, H), each depthwise convolution's weight (C, 1, K)), or a
            path: a weights file (``.safetensors`` with the ``safetensors`` package, else a ``torch.save`` file read
            with ``weights_only=True``) or a folder holding ``model.safetensors`` or ``pytorch_model.bin`` (or their
            sharded ``*.index.json``) and, optionally, ``config.json``. A prefix that every key shares before the
            official names (``model.``, ``_orig_mod.`` of ``torch.compile``, ``module.``) is dropped; tensors on the
            meta device or not floating point are refused.
        config: the checkpoint's config (``config.json`` read as a dict: ``mamba_ssm``'s ``MambaConfig`` fields or
            Hugging Face's), or None: the ``config.json`` of the folder (or of the weights file's folder) if there is
            one, else everything from the tensors' shapes with the official defaults (Mamba-2: one group, the gate
            after the norm; tied when the state dict's ``lm_head.weight`` is absent or equals the embedding). Sizes
            come from the shapes either way, and a config that disagrees with them is refused.
        device, dtype: of the model (float32 or float64; the weights are converted).

    Returns:
        the model, with ``layer`` ``"mamba"`` or ``"mamba2"``, ``vocab_size`` the embedding's rows and an untied head
        without a bias (``head_bias=False``), so that its config rebuilds it (a training run from ``model.config``).
    """
    state, found = _read(source)
    state = _unprefixed(state)
    _check_values(state)
    if config is None:
        config = found
    if config is not None and not isinstance(config, Mapping):
        raise ValueError(f"config must be a dict (config.json's contents) or None; got {type(config).__name__}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64; got {dtype}")
    style, kind, n_layers = _layout(state)
    cfg = _Config(dict(config or {}))
    cfg.refuse_unsupported()
    options = _layer_options(state, kind, cfg)
    embedding = state[_EMBEDDING[style]]
    vocab, d_model = embedding.shape
    tied = _tied(state, embedding, cfg)
    cfg.check_sizes(d_model=d_model, n_layers=n_layers, vocab=vocab)
    with torch.device("meta"):  # no random draw of weights about to be replaced (a 2.8B model's init takes minutes)
        model = SequenceModel(d_input=1, d_model=d_model, n_layers=n_layers, layer=kind, layer_options=options,
                              d_output=vocab, head="lm", pool=None, vocab_size=vocab, norm="rms", prenorm=True,
                              activation=None, mixer_out=None, final_norm="rms", tie_embeddings=tied, head_bias=False,
                              dtype=dtype)
    target = torch.device(device if device is not None else "cpu")
    model.to_empty(device=target)
    ours = _to_ssmkit(state, style, kind, n_layers, tied, dtype, target)
    expected = set(model.state_dict()) | {name for name, _ in model.named_buffers()}  # non-persistent ones too
    if set(ours) != expected:  # every parameter and buffer comes from the checkpoint, none stays uninitialised
        raise ValueError(f"the checkpoint does not fill this model: missing {sorted(expected - set(ours))[:6]}, "
                         f"extra {sorted(set(ours) - expected)[:6]}")
    try:
        model.load_state_dict(ours, strict=True)
    except RuntimeError as error:  # a size mismatch: a tensor whose shape disagrees with the others
        raise ValueError(f"the checkpoint's tensors disagree in shape: {error}") from None
    return model.eval()


def mamba_state_dict(model: SequenceModel, style: str = "mamba_ssm") -> dict[str, torch.Tensor]:
    """The official state dict of ``model`` (the inverse of :func:`load_mamba`): ``mamba_ssm``'s
    ``MambaLMHeadModel`` keys (``style="mamba_ssm"``) or Hugging Face's (``"hf"``), ``lm_head.weight`` included (the
    embedding's tensor when tied, as the official modules' own ``state_dict`` gives it), detached, on the model's device
    and in its dtype. A weight reparametrised with ``torch.nn.utils.parametrize`` (a LoRA adapter, weight norm) is
    exported as the weight the model computes with (the adapter merged); a ``torch.compile``'d model is read through.

    Args:
        model: a SequenceModel of the form :func:`load_mamba` builds (module docstring).
        style: ``"mamba_ssm"`` or ``"hf"``.

    Returns:
        the state dict: the embedding and ``lm_head.weight`` (V, H), each convolution's weight (C, 1, K), the other
        tensors in the shapes the model holds them.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}; got {style!r}")
    model = _unwrapped(model)
    kind = _convertible(model)
    ours = _effective_tensors(model)
    out = {_EMBEDDING[style]: ours["encoder.weight"]}
    back = {v: k for k, v in _KEYS[kind].items()}
    for i in range(len(model.blocks)):
        prefix = f"blocks.{i}."
        out[f"backbone.layers.{i}.norm.weight"] = ours[prefix + "norm.weight"]
        for key, value in ours.items():
            if key.startswith(prefix + "layer."):
                name = key[len(prefix + "layer."):]
                if name == _CONV[kind]:
                    value = value.unsqueeze(1)  # (C, K) -> nn.Conv1d's (C, 1, K)
                out[f"backbone.layers.{i}.mixer.{back[name]}"] = value
    out["backbone.norm_f.weight"] = ours["final_norm.weight"]
    out["lm_head.weight"] = ours["head.weight"]
    if "head.bias" in ours and bool(ours["head.bias"].any()):
        raise ValueError("this model's untied LM head has a non-zero bias; the official lm_head has none: build the "
                         "model with head_bias=False (as load_mamba does)")
    return out


def mamba_config(model: SequenceModel) -> dict[str, Any]:
    """``mamba_ssm``'s ``MambaConfig`` of ``model`` as a dict (``config.json`` of :func:`save_mamba`), so that
    ``MambaLMHeadModel(MambaConfig(**config))`` has ``model``'s architecture: ``vocab_size`` is the embedding's rows
    (already a multiple of ``pad_vocab_size_multiple``, so nothing is padded again).

    Args:
        model: a SequenceModel of the form :func:`load_mamba` builds.

    Returns:
        the config dict.
    """
    model = _unwrapped(model)
    kind = _convertible(model)
    layer = model.blocks[0].layer
    ssm_cfg: dict[str, Any] = {"d_state": layer.d_state, "d_conv": layer.d_conv, "expand": layer.expand,
                               "conv_bias": layer.conv_bias, "bias": layer.bias}
    if kind == "mamba":
        ssm_cfg["dt_rank"] = layer.rank
    else:
        ssm_cfg.update(layer="Mamba2", headdim=layer.headdim, ngroups=layer.ngroups, rmsnorm=layer.rmsnorm,
                       norm_before_gate=layer.norm_before_gate, D_has_hdim=layer.D_has_hdim)
    multiple = 8 if model.vocab_size % 8 == 0 else 1
    return {"d_model": model.d_model, "d_intermediate": 0, "n_layer": len(model.blocks),
            "vocab_size": model.vocab_size, "ssm_cfg": ssm_cfg, "attn_layer_idx": [], "attn_cfg": {},
            "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": multiple,
            "tie_embeddings": model.config.tie_embeddings}


def save_mamba(model: SequenceModel, folder: str | os.PathLike) -> None:
    """Write ``model`` in the official layout, ``config.json`` (:func:`mamba_config`) and ``pytorch_model.bin``
    (:func:`mamba_state_dict`, ``mamba_ssm`` keys, on the CPU), the files ``MambaLMHeadModel.from_pretrained`` and
    :func:`load_mamba` read. Each file is written to a temporary name and renamed.

    Args:
        model: a SequenceModel of the form :func:`load_mamba` builds.
        folder: the folder (created if missing).
    """
    config = mamba_config(model)
    state = {k: v.cpu() for k, v in mamba_state_dict(model).items()}
    os.makedirs(folder, exist_ok=True)
    atomic_write(os.path.join(folder, "pytorch_model.bin"), lambda f: torch.save(state, f))
    write_json(os.path.join(folder, "config.json"), config, indent=4)


def _read(source) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state dict, config.json's dict or None) of a state dict, a weights file or a checkpoint folder."""
    if isinstance(source, Mapping):
        state = dict(source)
        bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise ValueError(f"a state dict maps str keys to tensors; got {bad[0]!r} -> "
                             f"{type(state[bad[0]]).__name__}")
        return state, None
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"source must be a state dict, a weights file or a checkpoint folder; got "
                         f"{type(source).__name__}")
    path = os.fspath(source)
    if os.path.isdir(path):
        config = _config_json(path)
        for name in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                     "pytorch_model.bin.index.json"):
            if os.path.isfile(os.path.join(path, name)):
                return _read_weights(os.path.join(path, name)), config
        raise ValueError(f"{path}: no model.safetensors, pytorch_model.bin or sharded index (*.index.json) in the folder")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file or folder")
    return _read_weights(path), _config_json(os.path.dirname(path) or ".")


def _config_json(folder: str) -> dict[str, Any] | None:
    """``folder``'s config.json as a dict, or None when it has none."""
    name = os.path.join(folder, "config.json")
    if not os.path.isfile(name):
        return None
    with open(name) as f:
        return json.load(f)


def _read_weights(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".index.json"):  # a sharded checkpoint: {"weight_map": {key: shard file}}
        with open(path) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(_read_weights(os.path.join(os.path.dirname(path), shard)))
        return state
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ValueError(f"{path}: reading .safetensors needs the safetensors package (pip install safetensors)") from None
        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a saved state dict; got a {type(state).__name__}")
    return dict(state)


def _unprefixed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict without a prefix that every key shares before the official names (``model.`` of a training
    wrapper, ``_orig_mod.`` of a ``torch.compile``'d module, ``module.`` of DistributedDataParallel)."""
    if any(name in state for name in _EMBEDDING.values()):
        return state
    found = [k for k in state if k.endswith(tuple("." + name for name in _EMBEDDING.values()))]
    if len(found) == 1:
        prefix = found[0][: found[0].rindex("backbone.")]
        if all(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _check_values(state: dict[str, torch.Tensor]) -> None:
    """Refuse tensors that hold no weights: on the meta device, or not floating point (a quantised checkpoint)."""
    for key, value in state.items():
        if value.is_meta:
            raise ValueError(f"{key} is on the meta device (a shape without values): load_mamba needs the checkpoint's "
                             f"values (for the structure alone, pass the real tensors with device='meta')")
        if not value.is_floating_point():
            raise ValueError(f"{key} is {value.dtype}: the official checkpoints hold floating-point weights "
                             f"(a quantised checkpoint is not convertible)")


def _layout(state: dict[str, torch.Tensor]) -> tuple[str, str, int]:
    """(key style, layer name, number of blocks) of an official state dict, refusing what is not a Mamba LM."""
    styles = [s for s in STYLES if _EMBEDDING[s] in state]
    if len(styles) != 1 and any(k == "encoder.weight" or k.endswith(".encoder.weight") for k in state):
        raise ValueError("this is an ssmkit SequenceModel's state dict (encoder.weight, blocks.*), not an official "
                         "checkpoint: load it with SequenceModel.from_config(config).load_state_dict(state), or "
                         "write the official layout with save_mamba / mamba_state_dict")
    if len(styles) != 1:
        raise ValueError(f"not an official Mamba LM state dict: expected one of {sorted(_EMBEDDING.values())} "
                         f"(mamba_ssm's MambaLMHeadModel or Hugging Face's Mamba*ForCausalLM); keys start "
                         f"{sorted(state)[:4]}")
    layers: dict[int, set[str]] = {}
    for key in state:
        match = _LAYER.match(key)
        if match:
            layers.setdefault(int(match.group(1)), set()).add(match.group(2))
    if not layers or sorted(layers) != list(range(len(layers))):
        raise ValueError(f"the blocks backbone.layers.i must be numbered 0 ... n-1; got {sorted(layers)}")
    for i, names in layers.items():
        if any(n.startswith(("mlp.", "norm2.")) for n in names):
            raise ValueError(f"block {i} has an MLP (backbone.layers.{i}.mlp, d_intermediate > 0): ssmkit's blocks "
                             f"hold one mixer each; not convertible")
        if "mixer.A_log" not in names and "mixer.in_proj.weight" in names:  # mamba_ssm's MHA: in_proj, out_proj
            raise ValueError(f"block {i} is an attention layer (backbone.layers.{i}.mixer has no A_log: a hybrid's "
                             f"attn_layer_idx): only Mamba and Mamba-2 blocks are convertible")
        if "mixer.B_bias" in names:
            raise ValueError(f"block {i} is a Mamba-3 mixer (backbone.layers.{i}.mixer.B_bias): only Mamba and "
                             f"Mamba-2 blocks are convertible")
        if "norm.bias" in names:
            raise ValueError(f"block {i}'s norm has a bias: a LayerNorm model (rms_norm=False); only RMSNorm models "
                             f"are convertible")
    if "backbone.norm_f.bias" in state:
        raise ValueError("backbone.norm_f has a bias: a LayerNorm model (rms_norm=False); only RMSNorm models are "
                         "convertible")
    kinds = []
    for i, names in sorted(layers.items()):
        kinds.append("mamba2" if "mixer.dt_bias" in names else "mamba" if "mixer.x_proj.weight" in names else None)
        if kinds[-1] is None:
            raise ValueError(f"block {i} is neither a Mamba mixer (mixer.x_proj.weight) nor a Mamba-2 mixer "
                             f"(mixer.dt_bias); its keys: {sorted(names)[:8]}")
    if len(set(kinds)) != 1:
        raise ValueError(f"the blocks mix Mamba and Mamba-2 mixers ({kinds}): not convertible")
    return styles[0], kinds[0], len(layers)


class _Config:
    """The options of an official config dict (mamba_ssm's or Hugging Face's field names) that shapes cannot give."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.raw = config
        self.ssm = dict(config.get("ssm_cfg") or {})

    def get(self, *names: str, default: Any = None) -> Any:
        for name in names:
            if name in self.ssm:
                return self.ssm[name]
            if name in self.raw:
                return self.raw[name]
        return default

    def refuse_unsupported(self) -> None:
        c = self.raw
        if c.get("d_intermediate", 0):
            raise ValueError(f"config d_intermediate = {c['d_intermediate']}: blocks with an MLP are not convertible")
        if c.get("attn_layer_idx"):
            raise ValueError(f"config attn_layer_idx = {c['attn_layer_idx']}: attention layers (a hybrid) are not "
                             f"convertible")
        if c.get("rms_norm", True) is False:
            raise ValueError("config rms_norm = False: LayerNorm models are not convertible (ssmkit's Mamba LM uses "
                             "RMSNorm)")
        layer = self.ssm.get("layer", "Mamba1")
        if layer not in ("Mamba1", "Mamba2"):
            raise ValueError(f"config ssm_cfg layer = {layer!r}: only Mamba1 and Mamba2 mixers are convertible")
        eps = self.get("norm_epsilon", "layer_norm_epsilon", default=EPS)
        if not math.isclose(float(eps), EPS, rel_tol=1e-6):
            raise ValueError(f"config norm epsilon = {eps}: ssmkit's RMSNorms have ε = {EPS}; not convertible")
        limit = self.get("dt_limit", "time_step_limit", default=(0.0, math.inf))
        if limit is not None and (float(limit[0]) > 0 or math.isfinite(float(limit[1]))):
            raise ValueError(f"config Δ limit = {tuple(limit)}: a clamped Δ is not convertible (ssmkit's Mamba-2 has "
                             f"no limit, the official default (0, inf))")

    def check_sizes(self, d_model: int, n_layers: int, vocab: int) -> None:
        for names, value in ((("d_model", "hidden_size"), d_model), (("n_layer", "num_hidden_layers"), n_layers)):
            given = self.get(*names)
            if given is not None and given != value:
                raise ValueError(f"config {names[0]} = {given}, but the state dict's tensors give {value}")
        given = self.get("vocab_size")
        if given is not None and not 0 < given <= vocab:  # the official LM pads vocab_size up to the rows
            raise ValueError(f"config vocab_size = {given}, but the embedding has {vocab} rows")


def _layer_options(state: dict[str, torch.Tensor], kind: str, cfg: _Config) -> dict[str, Any]:
    """The layer's constructor options from block 0's tensor shapes (and, for Mamba-2, the config's groups)."""
    def block0(name: str) -> torch.Tensor | None:
        return state.get(f"backbone.layers.0.mixer.{name}")

    d_model = block0("in_proj.weight").shape[1]
    conv = block0("conv1d.weight")
    options: dict[str, Any] = {"d_conv": conv.shape[-1], "conv_bias": block0("conv1d.bias") is not None,
                               "bias": block0("in_proj.bias") is not None}
    if kind == "mamba":
        inner, d_state = block0("A_log").shape
        options.update(d_state=d_state, dt_rank=block0("dt_proj.weight").shape[1])
    else:
        inner, heads = block0("out_proj.weight").shape[1], block0("A_log").shape[0]
        groups = cfg.get("ngroups", "n_groups", default=1)
        d_ssm = cfg.get("d_ssm")
        if d_ssm is not None and d_ssm != inner:
            raise ValueError(f"config d_ssm = {d_ssm} < the inner width {inner} (a gated MLP beside the SSM): not "
                             f"convertible")
        if (conv.shape[0] - inner) % (2 * groups) or inner % heads:
            raise ValueError(f"Mamba-2 conv channels {conv.shape[0]}, inner width {inner} and {heads} heads do not fit "
                             f"{groups} group(s): give the checkpoint's config (ngroups / n_groups)")
        options.update(d_state=(conv.shape[0] - inner) // (2 * groups), headdim=inner // heads, ngroups=groups,
                       rmsnorm=block0("norm.weight") is not None, D_has_hdim=block0("D").shape[0] != heads,
                       norm_before_gate=bool(cfg.get("norm_before_gate", default=False)))
    if inner % d_model:
        raise ValueError(f"the inner width {inner} is not a multiple of d_model {d_model}: ssmkit's expand is an int")
    options["expand"] = inner // d_model
    read = {"d_state": options["d_state"], "d_conv": options["d_conv"], "expand": options["expand"],
            "inner": inner, "dt_rank": options.get("dt_rank"), "headdim": options.get("headdim"),
            "heads": heads if kind == "mamba2" else None}
    for names, key in ((("d_state", "state_size"), "d_state"), (("d_conv", "conv_kernel"), "d_conv"),
                       (("expand",), "expand"), (("intermediate_size",), "inner"),
                       (("dt_rank", "time_step_rank"), "dt_rank"), (("headdim", "head_dim"), "headdim"),
                       (("num_heads",), "heads")):
        given = cfg.get(*names)
        if given is None or read[key] is None:
            continue
        if given == "auto" and key == "dt_rank":
            given = math.ceil(d_model / 16)
        if given != read[key]:
            raise ValueError(f"config {names[0]} = {given!r}, but the state dict's tensors give {read[key]}: the "
                             f"config and the weights disagree (a config.json from another checkpoint?)")
    return options


def _tied(state: dict[str, torch.Tensor], embedding: torch.Tensor, cfg: _Config) -> bool:
    head = state.get("lm_head.weight")
    equal = head is None or (head.shape == embedding.shape and torch.equal(head, embedding))
    tie = cfg.get("tie_embeddings", "tie_word_embeddings")
    if tie is None:
        return equal
    if tie and not equal:
        raise ValueError("the config ties lm_head to the embedding, but the state dict's lm_head.weight differs from it")
    if not tie and head is None:
        raise ValueError("the config does not tie lm_head to the embedding, but the state dict has no lm_head.weight")
    return bool(tie)


def _to_ssmkit(state: dict[str, torch.Tensor], style: str, kind: str, n_layers: int, tied: bool,
               dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    """The official state dict under ssmkit's keys, in ``dtype`` on ``device`` (one copy each); an official key
    without a place is refused."""
    out = {"encoder.weight": state[_EMBEDDING[style]], "final_norm.weight": state.get("backbone.norm_f.weight")}
    out["head.weight"] = out["encoder.weight"] if tied else state.get("lm_head.weight")
    known = {_EMBEDDING[style], "backbone.norm_f.weight", "lm_head.weight"}
    for key, value in state.items():
        match = _LAYER.match(key)
        if match is None:
            if key not in known:
                raise ValueError(f"unexpected key {key!r} in the state dict")
            continue
        i, name = match.group(1), match.group(2)
        if name == "norm.weight":
            out[f"blocks.{i}.norm.weight"] = value
        elif name.startswith("mixer.") and name[6:] in _KEYS[kind]:
            ours = _KEYS[kind][name[6:]]
            if ours == _CONV[kind]:
                if value.dim() != 3 or value.shape[1] != 1:
                    raise ValueError(f"{key} must be a depthwise nn.Conv1d weight (C, 1, K); got {tuple(value.shape)}")
                value = value.squeeze(1)
            out[f"blocks.{i}.layer.{ours}"] = value
        else:
            raise ValueError(f"unexpected key {key!r} in the state dict (not a {kind} block's)")
    return {k: v.to(device=device, dtype=dtype) for k, v in out.items() if v is not None}


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``torch.compile`` wrapper (its ``_orig_mod``), else ``model``."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, torch.nn.Module) else model


def _effective_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()``, detached, but a tensor that ``torch.nn.utils.parametrize`` reparametrised (LoRA,
    weight norm) by the value the model computes with, under its own name (``in_proj.weight``, not
    ``in_proj.parametrizations.weight.original``); the parametrizations' own tensors are left out."""
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        owner, marker, rest = key.partition(".parametrizations.")  # owner.parametrizations.<tensor>.original
        if not marker:
            out[key] = value.detach()
            continue
        tensor = rest.split(".")[0]
        if f"{owner}.{tensor}" not in out:
            with torch.no_grad():
                out[f"{owner}.{tensor}"] = getattr(model.get_submodule(owner), tensor).detach()
    return out


def _convertible(model: SequenceModel) -> str:
    """The layer name of a SequenceModel of the form :func:`load_mamba` builds, or ValueError naming what differs."""
    if not isinstance(model, SequenceModel):
        raise ValueError(f"model must be a SequenceModel; got {type(model).__name__}")
    c = model.config
    wanted = {"layer": ("mamba", "mamba2"), "head": ("lm",), "norm": ("rms",), "prenorm": (True,),
              "final_norm": ("rms",), "pair": (False,)}
    for name, allowed in wanted.items():
        if getattr(c, name) not in allowed:
            raise ValueError(f"an official Mamba LM has {name} in {allowed}; this model has {name}={getattr(c, name)!r}")
    if c.vocab_size is None:
        raise ValueError("an official Mamba LM takes token ids: this model has no vocab_size")
    for i, block in enumerate(model.blocks):
        if not isinstance(block.activation, torch.nn.Identity) or not isinstance(block.out, torch.nn.Identity):
            raise ValueError(f"block {i} has an activation or output projection after its mixer; an official Mamba LM "
                             f"has neither")
    return c.layer
