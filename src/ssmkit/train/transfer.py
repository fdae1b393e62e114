"""Fine-tuning: start a model from another run's weights (:func:`load_weights`) and keep parts of it fixed
(:func:`freeze_parameters`); ``fit`` and ``ssmkit train`` use both (``TrainConfig.init_from``, ``TrainConfig.freeze``).

    model = SequenceModel.from_config(config)                  # e.g. another number of classes than the source
    report = load_weights(model, "runs/pretrain")              # the run folder's checkpoints/last.ckpt
    print(report.summary())                                    # loaded 24 tensors; the head differs, not loaded: ...
    freeze_parameters(model, "backbone")                       # train the head only (a linear probe)
    optimizer = torch.optim.AdamW(param_groups(model, lr=1e-3, weight_decay=0.05))  # frozen parameters left out

A source is a run folder (its ``checkpoints/last.ckpt``: the final weights), a checkpoint file (``last.ckpt``,
``step<N>.ckpt``, ``best_val.ckpt``: Lightning's ``{"state_dict": {"model.<name>": ...}}``), a file of
``torch.save(model.state_dict())``, or a state dict. Every parameter and buffer of the model is loaded from the tensor
of the same name and shape (cast to the model's dtype, as ``load_state_dict`` does); the head (``head.*``) may differ
in shape (another number of classes or outputs: its tensors keep the model's own values, for a model just built its
fresh initialisation), nothing else may (a ``ValueError`` names each tensor and the configurations). PyTorch's
``model.load_state_dict(ckpt["state_dict"], strict=False)`` loaded nothing from a run's checkpoint (every name has
the Lightning module's ``model.`` prefix) and said so only in a return value, and raised on a head of another size.
The optimizer marks of the SSM parameters (:mod:`ssmkit.layers.marks`) stay on the model's modules: the tensors
are copied into the model's own parameters, so :func:`ssmkit.train.param_groups` gives the groups a fresh model has.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from ssmkit.layers.marks import marked_parameters

HEAD = "head"
# the parts freeze_parameters names besides module paths: everything but the head, and the marked SSM parameters
FREEZE_PARTS = ("backbone", "ssm")
_PREFIX = "model."  # SequenceLightningModule holds the SequenceModel as ``self.model``


@dataclass
class LoadReport:
    """What :func:`load_weights` did.

    Args:
        source: the file read (a run folder's ``checkpoints/last.ckpt``), or ``"<state dict>"``.
        loaded: the names of the tensors loaded (the model's ``state_dict`` names).
        head_not_loaded: the head tensors left as they were (shape differs from the source's, or absent there),
            each with (model shape, source shape or None).
        source_model: the source run's model configuration (a checkpoint's ``hyper_parameters["model"]``), or None.
        untied_head_skipped: the model ties its head to its embedding (``tie_embeddings``) and the source's
            ``head.weight`` was another matrix than its ``encoder.weight`` (an untied source): the head is the loaded
            embedding, the source's head matrix is not loaded.
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    head_not_loaded: dict[str, tuple[tuple[int, ...], tuple[int, ...] | None]] = field(default_factory=dict)
    source_model: dict[str, Any] | None = None
    untied_head_skipped: bool = False

    def summary(self) -> str:
        """One line: the source, the tensors loaded, and the head tensors left at the model's own values."""
        line = f"initialised from {self.source}: loaded {len(self.loaded)} tensors"
        if self.head_not_loaded:
            line += f"; the head differs, not loaded, kept at its initialisation: {self.head_shapes()}"
        if self.untied_head_skipped:
            line += ("; the source's head.weight is not loaded: this model's head is its embedding (tie_embeddings), "
                     "loaded from the source's encoder.weight")
        return line

    def head_shapes(self) -> str:
        """The head tensors not loaded, each with its shape and the source's (``head.weight (3, 8) (source (1,
        8))``)."""
        return ", ".join(f"{name} {shape} (source {'absent' if theirs is None else theirs})"
                         for name, (shape, theirs) in self.head_not_loaded.items())


RUN_CHECKPOINTS = (os.path.join("checkpoints", "last.ckpt"), "model.pt", "last.ckpt")
"""What a folder given as a checkpoint stands for, the first present in this order: an ``ssmkit train`` run's final
weights, an ``ssmkit sysid`` run's model, a checkpoints folder's final weights."""


def checkpoint_file(source: str | os.PathLike) -> str:
    """The checkpoint a source names: the file itself, or in a folder the first of :data:`RUN_CHECKPOINTS` present
    (a run folder's ``checkpoints/last.ckpt``: the final weights). ``init_from``, ``ssmkit analyze`` and
    :func:`ssmkit.analysis.commands.load_model` read a folder by this one rule.

    Args:
        source: a run folder (of ``ssmkit train`` or ``ssmkit sysid``), a checkpoints folder, or a file.

    Returns:
        the file's path.

    Raises:
        FileNotFoundError: no such file, or a folder holding none of them (naming what was looked for).
    """
    path = os.fspath(source)
    if os.path.isdir(path):
        for name in RUN_CHECKPOINTS:
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise FileNotFoundError(f"no checkpoint at {path!r}: a folder, holding none of {', '.join(RUN_CHECKPOINTS)}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    return path


def source_state(source: str | os.PathLike | Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict | None, str]:
    """The model tensors of a source (module docstring), by the model's own names, with its model configuration.

    Args:
        source: a run folder, a checkpoint file, a ``state_dict`` file, a checkpoint dict or a state dict.

    Returns:
        (tensors by name, the source's model configuration or None, the file read or ``"<state dict>"``).
    """
    if isinstance(source, Mapping):
        data, where = source, "<state dict>"
    else:
        official = [name for name in ("pytorch_model.bin", "model.safetensors")
                    if os.path.isfile(os.path.join(os.fspath(source), name))]
        if official:
            raise ValueError(f"init_from {os.fspath(source)!r} holds {official[0]}, an official (mamba_ssm or Hugging "
                             f"Face) checkpoint: load it with ssmkit.models.load_mamba and train that model")
        try:
            where = checkpoint_file(source)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"init_from: {error} (give a run folder, or a checkpoint file such as "
                                    "runs/a/checkpoints/best_val.ckpt)") from None
        data = torch.load(where, map_location="cpu", weights_only=True)
        wiener = next((key for key in ("deep_wiener", "wiener_ensemble") if isinstance(data, Mapping) and key in data),
                      None)
        if wiener is not None:
            raise ValueError(f"init_from {where!r} is a {'DeepWiener' if wiener == 'deep_wiener' else 'WienerEnsemble'}"
                             " file (the model.pt of an 'ssmkit sysid' run), not the weights of a SequenceModel: "
                             "init_from takes a run of 'ssmkit train' or a SequenceModel's state_dict (load the "
                             "file with ssmkit.analysis.commands.load_model)")
    config = None
    if isinstance(data.get("state_dict"), Mapping):  # a Lightning checkpoint: {"state_dict": ..., "hyper_parameters"}
        config = (data.get("hyper_parameters") or {}).get("model")
        data = data["state_dict"]
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"init_from {where!r} holds no tensors (expected a checkpoint or a state_dict)")
    if all(k.startswith(_PREFIX) for k in tensors):
        tensors = {k[len(_PREFIX):]: v for k, v in tensors.items()}
    if any(k.endswith(("backbone.embedding.weight", "backbone.embeddings.weight")) for k in tensors):
        raise ValueError(f"init_from {where!r} is an official Mamba LM state dict (backbone.*, lm_head), not a "
                         f"SequenceModel's: load it with ssmkit.models.load_mamba and train that model")
    return tensors, (dict(config) if isinstance(config, Mapping) else None), where


def _is_head(name: str) -> bool:
    return name == HEAD or name.startswith(HEAD + ".")


def _model_difference(source_model: dict | None, model: nn.Module) -> str:
    """The configuration fields in which the source's model and ``model`` differ (its ``config``), or ""."""
    config = getattr(model, "config", None)
    if source_model is None or config is None or not hasattr(config, "to_dict"):
        return ""
    from ssmkit.models.config import as_plain

    theirs, ours = as_plain(source_model), config.to_dict()
    fields = [k for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
    return "; the configurations differ in " + ", ".join(
        f"{k} (source {theirs.get(k)!r}, this model {ours.get(k)!r})" for k in fields) if fields else ""


def load_weights(model: nn.Module, source: str | os.PathLike | Mapping[str, Any],
                 skip_mismatched_head: bool = True) -> LoadReport:
    """Load every parameter and buffer of ``model`` from the tensor of the same name and shape in ``source``.

    The model must match the source's everywhere but in its head (``head.*``): a tensor of the model absent from
    the source, one of the source's absent from the model, or one of another shape, outside the head, is a
    ``ValueError`` naming them (and the configurations' differing fields, for a run's checkpoint); nothing is loaded
    then. A head tensor of another shape than the source's (another number of classes, outputs or a dual encoder's
    head) is not loaded and keeps the model's own values (for a model just built, its fresh initialisation), named
    in the report; with ``skip_mismatched_head=False`` it is a ``ValueError`` too. Loaded tensors are copied into the
    model's parameters (``load_state_dict``; cast to their dtype), so the SSM parameters keep their optimizer marks.

    Args:
        model: a :class:`ssmkit.models.SequenceModel` (any module whose output layer is ``head``).
        source: a run folder (its ``checkpoints/last.ckpt``), a checkpoint file (``best_val.ckpt`` for the best
            validation's weights), a file of ``torch.save(model.state_dict())``, or a checkpoint or state dict.
        skip_mismatched_head: leave a head of another shape at the model's values (True, the default), or refuse it.

    Returns:
        a :class:`LoadReport` (``summary()`` is one line).
    """
    tensors, source_model, where = source_state(source)
    own = model.state_dict()
    report = LoadReport(source=where, source_model=source_model)
    missing = [k for k in own if k not in tensors and not _is_head(k)]
    unexpected = [k for k in tensors if k not in own and not _is_head(k)]
    reshaped = [f"{k} {tuple(own[k].shape)} (source {tuple(tensors[k].shape)})" for k in own
                if k in tensors and not _is_head(k) and own[k].shape != tensors[k].shape]
    if missing or unexpected or reshaped:
        parts = [f"{label} {names[:6]}{' ...' if len(names) > 6 else ''}" for label, names in
                 (("absent from the source:", missing), ("not in this model:", unexpected),
                  ("of another shape:", reshaped)) if names]
        raise ValueError(f"init_from {where!r}: the source's model differs from this one beyond the head, so its "
                         f"weights do not fit (tensors {'; '.join(parts)}){_model_difference(source_model, model)}. "
                         "Only the head may differ (another number of classes or outputs)")
    head, encoder = getattr(model, "head", None), getattr(model, "encoder", None)
    tied = getattr(head, "weight", None) is not None and head.weight is getattr(encoder, "weight", None)
    for name, value in own.items():
        if not _is_head(name) or (tied and name == "head.weight"):
            continue  # a tied head's matrix is the embedding, loaded (or refused above) as encoder.weight
        theirs = tensors.get(name)
        if theirs is None or theirs.shape != value.shape:
            report.head_not_loaded[name] = (tuple(value.shape), None if theirs is None else tuple(theirs.shape))
    if tied and "head.weight" in tensors and not torch.equal(tensors["head.weight"], tensors["encoder.weight"]):
        # a tied model's head is its embedding: an untied source's head matrix has nowhere to go
        report.untied_head_skipped = True
    if (report.head_not_loaded or report.untied_head_skipped) and not skip_mismatched_head:
        differs = report.head_shapes() or "head.weight: the source's is not its embedding, this model's is"
        raise ValueError(f"init_from {where!r}: the head differs from the source's ({differs}); pass "
                         "skip_mismatched_head=True to keep it at its initialisation")
    chosen = {k: tensors[k] for k in own if k not in report.head_not_loaded and not (tied and k == "head.weight")}
    model.load_state_dict(chosen, strict=False)
    # a tied head holds the source's embedding now: loaded unless the source's head was another matrix
    report.loaded = [k for k in own if k in chosen or (tied and k == "head.weight" and not report.untied_head_skipped)]
    return report


def split_parts(text: str) -> list[str]:
    """The part names of one comma-separated string, each stripped of spaces (``"ssm, encoder"`` → ``["ssm",
    "encoder"]``); an empty name (``"ssm,"``, ``""``) is kept, for the caller to refuse. ``TrainConfig.freeze`` and
    :func:`freeze_parameters` read a string by this one rule.

    Args:
        text: the names, separated by commas.

    Returns:
        the names in order.
    """
    return [part.strip() for part in text.split(",")]


def freeze_parameters(model: nn.Module, parts: str | list[str] | tuple[str, ...]) -> list[str]:
    """Keep ``parts`` of ``model`` fixed in training: ``requires_grad_(False)`` on their parameters, which
    :func:`ssmkit.train.param_groups` then leaves out of the optimizer (no update, no weight decay).

    Each part is ``"backbone"`` (every parameter outside the head: encoder, blocks, final norm; the head alone trains,
    a linear probe), ``"ssm"`` (the SSM parameters the layers mark: Δ, A/Λ, B, P; :mod:`ssmkit.layers.marks`), or a
    module or parameter name of ``model.named_parameters()`` (``encoder``, ``blocks``, ``blocks.0``,
    ``blocks.1.layer``, ``final_norm``, ``head``), which freezes that module's parameters. Buffers are not
    parameters: a batch norm's running statistics still update in training mode, as in PyTorch.

    Args:
        model: the model.
        parts: the parts to freeze, a list or one comma-separated string (``"ssm,encoder"``, read by
            :func:`split_parts` as ``TrainConfig.freeze`` is; an empty list freezes nothing).

    Returns:
        the names of the frozen parameters.

    Raises:
        ValueError: ``parts`` is not a string, list or tuple of part names, or holds an empty name (``"ssm,"``); a
            part names no parameter of the model; or the parts leave no parameter to train.
    """
    given = parts
    if isinstance(parts, str):
        parts = split_parts(parts)
    if not isinstance(parts, (list, tuple)) or not all(isinstance(part, str) and part for part in parts):
        raise ValueError(f"freeze: parts must be part names, a list of them or one comma-separated string (e.g. "
                         f"'backbone' or 'ssm,encoder'), none of them empty; got {given!r}")
    names = [name for name, _ in model.named_parameters()]
    marked = {name for name, _, marks in marked_parameters(model) if marks is not None}
    chosen: set[str] = set()
    for part in parts:
        if part == "backbone":
            found = {n for n in names if not _is_head(n)}
        elif part == "ssm":
            found = set(marked)
        else:
            found = {n for n in names if n == part or n.startswith(part + ".")}
        if not found:
            tops = sorted({n.split(".")[0] for n in names} | {".".join(n.split(".")[:2]) for n in names
                                                              if n.startswith("blocks.")})
            what = "the model marks no SSM parameter" if part == "ssm" else "it names no parameter of the model"
            raise ValueError(f"freeze {part!r}: {what}; give {list(FREEZE_PARTS)} or a module name such as {tops}")
        chosen |= found
    if chosen and len(chosen) == len(names):
        raise ValueError(f"freeze {list(parts)} leaves no parameter to train: freeze fewer parts (e.g. 'backbone' "
                         "keeps the head trainable)")
    params = dict(model.named_parameters())
    for name in chosen:
        params[name].requires_grad_(False)
    return [n for n in names if n in chosen]
