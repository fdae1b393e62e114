"""An experiment: one model on one task with one training configuration, as ``ssmkit train`` and the shipped
configs describe it.

    task: listops                      # a name of ssmkit.data.available_tasks()
    task_options: {}                   # the task's options (sizes, seed)
    model: s4                          # a layer name, or a list of names (a hybrid)
    layer_options: {d_state: 64}       # the layer's options (by name for a hybrid)
    d_model: 128
    n_layers: 6
    train: {lr: 0.01, max_steps: 5000} # TrainConfig

The task decides what the model reads and predicts (its ``TaskInfo``): token or real inputs, the number of classes
or targets, the head (``"classify"`` for one label, ``"regress"``, ``"lm"`` for a target per step), whether inputs
are pairs for a dual encoder (LRA retrieval) and which token pads (pooling skips it).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from ssmkit.models import SequenceModelConfig
from ssmkit.train.config import TrainConfig

_HEADS = {"classify": "classify", "regress": "regress", "tokens": "lm"}


@dataclass
class Experiment:
    """One training run's full description (everything but where it writes).

    Args:
        task: the task name (``ssmkit tasks`` lists them).
        model: the layer name of every block, or a list of names, one per block (a hybrid); ``"s4d"`` (the
            default).
        task_options: options of the task (sizes, seed, length; default none: the task's defaults).
        layer_options: the layer's constructor options (for a hybrid: a dict from layer name to options; default
            none: the layer's defaults).
        d_model: width H of every block (default 64).
        n_layers: blocks (default 4).
        norm: ``"layer"`` (the default), ``"batch"``, ``"rms"`` or None.
        prenorm: normalise block inputs (True, the default) or residual sums (False).
        activation: the block activation (``"auto"`` (the default): the layer's default).
        mixer_out: the block output projection (``"auto"`` (the default): the layer's default).
        dropout: dropout in every block (default 0.0).
        pool: ``"mean"`` (the default) or ``"last"`` for sequence-level targets (ignored for per-step targets: tokens,
            and a task whose ``TaskInfo.per_step`` is True).
        tie_embeddings: share the embedding matrix with the LM head of a next-token task, ``SequenceModel``'s option
            (False, the default).
        final_norm: the norm after the last block, ``SequenceModel``'s option: ``"auto"`` (the default: a LayerNorm
            after a pre-norm stack), ``"layer"``, ``"rms"`` or None.
        head_bias: the linear head's bias, ``SequenceModel``'s option (True, the default).
        train: the training configuration (default ``TrainConfig()``; a dict is read by ``TrainConfig.from_dict``).
    """

    task: str
    model: str | list[str] = "s4d"
    task_options: dict[str, Any] = field(default_factory=dict)
    layer_options: dict[str, Any] = field(default_factory=dict)
    d_model: int = 64
    n_layers: int = 4
    norm: str | None = "layer"
    prenorm: bool = True
    activation: str | None = "auto"
    mixer_out: str | None = "auto"
    dropout: float = 0.0
    pool: str | None = "mean"
    tie_embeddings: bool = False
    final_norm: str | None = "auto"
    head_bias: bool = True
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if isinstance(self.train, dict):
            self.train = TrainConfig.from_dict(self.train)

    def to_dict(self) -> dict[str, Any]:
        """The experiment as a plain dict (YAML/JSON-ready)."""
        return dataclasses.asdict(self)

    def model_config(self, info) -> SequenceModelConfig:
        """The model for a task (``info``: the task's :class:`ssmkit.data.TaskInfo`).

        Args:
            info: what the task gives: inputs (tokens or features), targets (classify, regress, tokens), classes.

        Returns:
            the :class:`SequenceModelConfig`.
        """
        head = _HEADS[info.target]
        return SequenceModelConfig(
            d_input=info.d_input or 1,
            d_model=self.d_model,
            n_layers=self.n_layers,
            layer=self.model,
            d_output=info.n_classes,
            layer_options=dict(self.layer_options),
            head=head,
            pool=None if head == "lm" or info.per_step else self.pool,
            vocab_size=info.vocab_size,
            pair=info.pair,
            pad_id=info.pad_id,
            norm=self.norm,
            prenorm=self.prenorm,
            activation=self.activation,
            mixer_out=self.mixer_out,
            dropout=self.dropout,
            tie_embeddings=self.tie_embeddings,
            final_norm=self.final_norm,
            head_bias=self.head_bias,
        )


def run_experiment(
    experiment: Experiment, out_dir: str, resume: bool = False, progress: bool = True, task: Any = None
) -> dict[str, Any]:
    """Load the task, build the model, train it (:func:`ssmkit.train.fit`), and return the result record.

    Args:
        experiment: what to run.
        out_dir: the run folder.
        resume: continue from the run folder's last checkpoint.
        progress: show the progress bar.
        task: a task object to train on (an :class:`ssmkit.data.Task`, e.g. one from ``ssmkit.data.from_arrays``)
            instead of the registry's ``get_task(experiment.task, **experiment.task_options)``; its registry name
            must be ``experiment.task``. None (the default): the registry's.

    Returns:
        the result record of :func:`ssmkit.train.fit`, with the task's title, the model and the test metric; a task
        with extra test splits ``test@<L>`` (induction heads at longer lengths) adds ``test@<L>_<metric>`` for each.

    The run folder also gets ``task.json`` (the task's name and options, beside fit's ``model.json`` and
    ``train.json``, and for a task that standardised its inputs, the ``arrays`` task's ``normalise``, the training
    split's ``input_mean`` and ``input_std`` that the model's inputs must be standardised with: the model, its
    checkpoints and its ONNX graphs take (x − mean)/std); a resume with another task or other task options is refused
    (``ValueError``): it trained on, and tested, other data than the saved run's without a word. A fresh run whose
    ``val_every`` exceeds ``max_steps`` (it would never validate) with ``test_weights`` ``"best_val"`` or
    ``early_stopping`` set is refused before the task is loaded (``ValueError``), not after it has trained.
    """
    from ssmkit.data import get_task
    from ssmkit.train.run import fit

    if task is not None and getattr(task, "name", None) != experiment.task:
        raise ValueError(f"run_experiment: the task given is {getattr(task, 'name', type(task).__name__)!r}, but the "
                         f"experiment names {experiment.task!r} (task.json records the experiment's): give "
                         f"Experiment(task={getattr(task, 'name', '...')!r}, ...)")
    record = _same_task_record(experiment, out_dir, resume)
    _check_validation_period(experiment.train, out_dir, resume)
    if task is None:
        task = get_task(experiment.task, **experiment.task_options)
    info = task.info()
    splits = task.splits()
    record = {**record, **_standardisation_record(task)}
    tensors = {name: tuple(ds.tensors) for name, ds in splits.items()}
    transform = _batch_transform(next(iter(splits.values())))
    config = experiment.model_config(info)
    labels = {"task": info.title, "model": experiment.model if isinstance(experiment.model, str) else "+".join(experiment.model)}
    extra = {name: t for name, t in tensors.items() if name.startswith("test@")}
    return fit(config, experiment.train, tensors["train"], tensors.get("val"), tensors.get("test"), out_dir,
               resume=resume, progress=progress, labels=labels, transform=transform, extra_tests=extra or None,
               records={"task": record})


def _check_validation_period(train: Any, out_dir: str, resume: bool) -> None:
    """Refuse, before the task is loaded, a fresh run that can never validate (``val_every`` > ``max_steps``) while
    ``test_weights`` is ``"best_val"`` or ``early_stopping`` is set, both of which need a validation.

    A shipped config overridden as its header suggests (``--config sequential/smnist-s4 --train.max_steps 1000``: its
    ``val_every`` is 1,080 and ``test_weights`` ``best_val``) trained the whole run and then failed with a
    RuntimeError and a traceback; in ``ssmkit compare`` the first model's run failed so, and none was compared. A run
    resumed from a checkpoint is not checked (its earlier sessions may have validated at another period).

    Args:
        train: the experiment's :class:`TrainConfig`.
        out_dir: the run folder.
        resume: whether the run continues from ``out_dir``'s last checkpoint.
    """
    if train.val_every <= train.max_steps:
        return
    if resume and os.path.isfile(os.path.join(out_dir, "checkpoints", "last.ckpt")):
        return
    needs = [what for what, wanted in (("test_weights 'best_val'", train.test_weights == "best_val"),
                                       (f"early_stopping {train.early_stopping}", train.early_stopping is not None))
             if wanted]
    if needs:
        raise ValueError(f"val_every {train.val_every} > max_steps {train.max_steps}: the run would never validate, "
                         f"but {' and '.join(needs)} needs a validation; set val_every to at most {train.max_steps} "
                         f"(--train.val_every {train.max_steps}, or 0: validate once, at the end)"
                         + (", or test_weights 'final'" if train.test_weights == "best_val" else ""))


def _standardisation_record(task: Any) -> dict[str, list[float]]:
    """``{"input_mean": [...], "input_std": [...]}`` (per input feature) of a task that standardised its float inputs
    with its training split's statistics (the ``arrays`` task's ``mean`` and ``std``), else {}. A model trained on them
    expects standardised inputs: without this record, a run folder (and the graphs ``ssmkit analyze --onnx`` writes from
    it) gave no way to know, and raw inputs gave wrong outputs without a word."""
    mean, std = getattr(task, "mean", None), getattr(task, "std", None)
    if mean is None or std is None:
        return {}
    return {"input_mean": [float(v) for v in mean], "input_std": [float(v) for v in std]}


def _same_task_record(experiment: Experiment, out_dir: str, resume: bool) -> dict[str, Any]:
    """The run's ``task.json`` record (task name and options); on a resume, refuse another task or other task options
    than the saved record's."""
    import json

    record = os.path.join(out_dir, "task.json")
    given = json.loads(json.dumps({"task": experiment.task, "task_options": experiment.task_options}))
    checkpoints = os.path.join(out_dir, "checkpoints")
    if resume and os.path.isfile(os.path.join(checkpoints, "last.ckpt")) and os.path.isfile(record):
        with open(record) as f:
            saved = json.load(f)
        changes = [f"{k}: saved {saved.get(k)!r}, given {given[k]!r}" for k in given if saved.get(k) != given[k]]
        if changes:
            raise ValueError(f"resume continues the run saved in {out_dir} on its own data, but the task given differs "
                             f"({'; '.join(changes)}): give the saved task (task.json in the run folder), or start a "
                             "new run in another out_dir")
    return given


def _batch_transform(dataset):
    """How a batch of a task's stored tensors becomes model input: scaled floats for integer-stored sequences
    (images, audio: ``ScaledSequences``), nothing for plain tensor datasets."""
    scale, shift = getattr(dataset, "scale", None), getattr(dataset, "shift", None)
    if scale is None or shift is None:
        return None
    return _Scale(scale, shift)


class _Scale:
    """x ↦ x · scale + shift in float32 (a picklable batch transform for data-parallel workers)."""

    def __init__(self, scale, shift) -> None:
        self.scale, self.shift = scale, shift

    def __call__(self, batch):
        x, *rest = batch
        return (x.float() * self.scale + self.shift, *rest)
