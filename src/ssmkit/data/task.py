"""Tasks by name: what a task gives (``TaskInfo``), the ``Task`` base classes and the registry.

    ssmkit.data.available_tasks()                      # ["adding", "arrays", "copying", ..., "sfashion", "smnist"]
    task = ssmkit.data.get_task("mqar", length=64, num_kv_pairs=4, n_train=1000)
    task.info()                                        # shapes, classes, vocabulary, length, source
    task.present()                                     # False until generated / while the files are missing
    splits = task.splits()                             # {"train": Dataset, "val": ..., "test": ...}
    x, y = splits["train"][0]

Every split is a dataset of pairs ``x, y``: a ``torch.utils.data.TensorDataset``, or, for images and audio kept
as integers (MNIST, CIFAR, Pathfinder, Speech Commands), a :class:`ssmkit.data.ScaledSequences`, whose items
``ds[i]`` are the scaled float32 inputs but whose ``ds.tensors`` are the stored integers: scale those with
``x.float() * ds.scale + ds.shift`` (``ssmkit train`` does, per batch). The inputs are token ids ``(B, L)``
(int64, ``info().vocab_size`` ids) or features ``(B, L, H)`` (float32, H = ``info().d_input``); a pair task
(``info().pair``, LRA retrieval) gives two sequences per item, ``(B, 2, L)``. The targets
depend on ``info().target``:

- ``"classify"``: one class per sequence, ``y`` is ``(B,)`` int64 in ``[0, n_classes)``.
- ``"regress"``: ``y`` is ``(B, n_classes)`` float32 (``n_classes`` = number of regression targets).
- ``"tokens"``: one class per position, ``y`` is ``(B, L)`` int64 with ``-100`` (PyTorch's ``ignore_index``)
  wherever the loss is not taken.

A task is a dataclass whose fields are its options (with the paper's defaults): ``get_task(name, **options)``
passes the options in one hop to the class, so a misspelt option fails with Python's own ``TypeError``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
from typing import Callable, ClassVar, TypeVar

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ssmkit.data.store import DataMissingError, cache_path, cached
from ssmkit.layers.checks import UnknownOptionError

IGNORE_INDEX = -100  # targets at positions without a loss (PyTorch's cross_entropy ignore_index)


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """What a task gives.

    Args:
        name: the registry name.
        title: the name to report results under (e.g. "ListOps (regenerated)").
        kind: "generated" (made by ssmkit from a seed and cached), "bundled" (shipped by an installed package)
            or "files" (read from files the user has).
        target: "classify", "regress" or "tokens" (see the module docstring).
        length: the sequence length L of the inputs (padded length for variable-length data; the training
            length where the test split is longer).
        d_input: features per step H of float inputs (B, L, H); None for token inputs (B, L).
        vocab_size: number of token ids of token inputs; None for float inputs.
        n_classes: classes (classify, tokens) or regression targets (regress): the model's d_output.
        source: where the data comes from (paper, generator, release).
        needs: what must be present for the task to run (where to put the files).
        pair: the inputs are pairs of sequences, (B, 2, L) token ids or (B, 2, L, H) features, to be encoded
            separately (a dual encoder, as LRA retrieval); the target is about the pair.
        pad_id: the token id that pads sequences to ``length`` (a model's pooling can skip it), or None.
        per_step: ``"regress"`` targets are one value (or vector) per step, (B, L) or (B, L, n_classes), so the model
            keeps every step (no pooling); False (the default): one per sequence. ``"tokens"`` targets are per step
            always.
    """

    name: str
    title: str
    kind: str
    target: str
    length: int
    d_input: int | None
    vocab_size: int | None
    n_classes: int
    source: str
    needs: str
    pair: bool = False
    pad_id: int | None = None
    per_step: bool = False


class Task:
    """Base of every task: ``info()``, ``present(root)`` and ``splits(root)``."""

    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        """Check the options' kinds when a (dataclass) task is built (:func:`check_option_types`); a subclass with its
        own ``__post_init__`` calls this first."""
        check_option_types(self)

    def info(self) -> TaskInfo:
        """What the task gives (shapes, classes, vocabulary, source)."""
        raise NotImplementedError

    def present(self, root: str | os.PathLike | None = None) -> bool:
        """Whether the data is there (generated tasks: whether they are cached).

        Args:
            root: the data root (default ``$SSMKIT_DATA`` or ``~/.cache/ssmkit``).
        """
        raise NotImplementedError

    def splits(self, root: str | os.PathLike | None = None) -> dict[str, TensorDataset]:
        """The train / val / test datasets (``DataMissingError`` with one line if the files are missing).

        Args:
            root: the data root (default ``$SSMKIT_DATA`` or ``~/.cache/ssmkit``).
        """
        raise NotImplementedError


class GeneratedTask(Task):
    """A task made from a seed by :meth:`generate` and cached under ``<root>/generated/<name>/``.

    Subclasses are dataclasses whose fields (the seed included) are the options and the cache key.
    """

    def options(self) -> dict:
        """The options (dataclass fields) as a JSON-serialisable dict."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    def generate(self) -> dict[str, torch.Tensor]:
        """Draw every split: ``{"train_x": ..., "train_y": ..., "val_x": ..., ...}`` (any extra splits too)."""
        raise NotImplementedError

    def present(self, root: str | os.PathLike | None = None) -> bool:
        """Whether this task with these options is already in the cache.

        Args:
            root: the data root (default ``$SSMKIT_DATA`` or ``~/.cache/ssmkit``).
        """
        return cache_path(self.name, self.options(), root).exists()

    def splits(self, root: str | os.PathLike | None = None) -> dict[str, TensorDataset]:
        """Load the splits from the cache, generating and caching them (atomically) the first time.

        Args:
            root: the data root (default ``$SSMKIT_DATA`` or ``~/.cache/ssmkit``).
        """
        tensors = cached(self.name, self.options(), self.generate, root)
        return tensor_splits(tensors)


class FileTask(Task):
    """A task read from files the user has, under ``<root>/<folder>`` (``folder`` is set per task)."""

    def folder(self, root: str | os.PathLike | None = None):
        """The folder the files must be in.

        Args:
            root: the data root (default ``$SSMKIT_DATA`` or ``~/.cache/ssmkit``).
        """
        raise NotImplementedError

    def required(self) -> list[str]:
        """The paths (relative to :meth:`folder`) that must exist."""
        raise NotImplementedError

    def alternatives(self, name: str) -> list[str]:
        """The file names accepted for the required ``name`` (e.g. also ``name.gz``); default just ``name``.

        Args:
            name: an entry of :meth:`required`.
        """
        return [name]

    def locate(self, name: str, root: str | os.PathLike | None = None):
        """The path of the first existing alternative of ``name`` in :meth:`folder`, or None.

        Args:
            name: an entry of :meth:`required`.
            root: the data root (default ``$SSMKIT_DATA`` or ``~/.cache/ssmkit``).
        """
        base = self.folder(root)
        return next((base / a for a in self.alternatives(name) if (base / a).exists()), None)

    def present(self, root: str | os.PathLike | None = None) -> bool:
        """Whether every required file is in :meth:`folder`.

        Args:
            root: the data root (default ``$SSMKIT_DATA`` or ``~/.cache/ssmkit``).
        """
        return all(self.locate(p, root) is not None for p in self.required())

    def check_present(self, root: str | os.PathLike | None = None) -> None:
        """Raise ``DataMissingError`` (one line: what is missing and where to put it) unless :meth:`present`.

        Args:
            root: the data root (default ``$SSMKIT_DATA`` or ``~/.cache/ssmkit``).
        """
        missing = [p for p in self.required() if self.locate(p, root) is None]
        if missing:
            raise DataMissingError(
                f"{self.name}: data not found: put {', '.join(missing)} in {self.folder(root)} ({self.info().needs})"
            )


def tensor_splits(tensors: dict[str, torch.Tensor]) -> dict[str, TensorDataset]:
    """Pair ``<split>_x`` / ``<split>_y`` tensors into TensorDatasets (integer tensors widened to int64).

    Args:
        tensors: ``{"train_x": (B, L) or (B, L, H), "train_y": (B,) or (B, L) or (B, C), ...}``.
    """
    out = {}
    for key in tensors:
        if key.endswith("_x"):
            split = key[:-2]
            x, y = tensors[key], tensors[f"{split}_y"]
            out[split] = TensorDataset(_widen(x), _widen(y))
    return out


def _widen(t: torch.Tensor) -> torch.Tensor:
    return t.long() if not t.is_floating_point() and t.dtype != torch.bool else t


def compact_ids(t: torch.Tensor) -> torch.Tensor:
    """Token ids stored compactly for the cache (int16 when they fit, else int32); widened again on load.

    Args:
        t: integer tensor of ids (any shape), -100 allowed.
    """
    if t.numel() == 0 or (int(t.min()) >= -32768 and int(t.max()) <= 32767):
        return t.to(torch.int16)
    return t.to(torch.int32)


def split_generator(seed: int, split: int) -> torch.Generator:
    """An independent torch generator for split number ``split`` of a task seeded with ``seed``.

    Args:
        seed: the task's seed.
        split: 0 train, 1 val, 2 test, 3... extra splits.
    """
    state = np.random.SeedSequence([seed, split]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def draw_splits(task: GeneratedTask, draw: Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
                ) -> dict[str, torch.Tensor]:
    """The three splits of a generated task: split i of (train, val, test) (i = 0, 1, 2) is
    ``draw(n_i, split_generator(task.seed, i))`` with n_i = ``task.n_train``, ``n_val``, ``n_test`` -- independent,
    reproducible draws per split (:func:`ssmkit.data.task.split_generator`).

    Args:
        task: the task (its ``seed``, ``n_train``, ``n_val`` and ``n_test``).
        draw: called with n and the split's generator, returns the inputs and targets of n sequences.

    Returns:
        ``{"train_x": ..., "train_y": ..., "val_x": ..., "val_y": ..., "test_x": ..., "test_y": ...}``.
    """
    out = {}
    for i, (split, n) in enumerate(zip(("train", "val", "test"), (task.n_train, task.n_val, task.n_test))):
        out[f"{split}_x"], out[f"{split}_y"] = draw(n, split_generator(task.seed, i))
    return out


def check_option_types(task: Task) -> None:
    """Raise ``ValueError`` naming the first option of a (dataclass) task whose value is not of its default's kind: an
    int option takes an int (not a bool), a float option a finite number, a str option a str, a bool option a bool.
    The ranges are each task's own checks; this catches 2.5, True or "3" for a size or a seed when the task is built
    (:meth:`Task.__post_init__`), before any file is read (they failed with a TypeError deep in the split, after the
    data had loaded).

    Args:
        task: a task instance.
    """
    if not dataclasses.is_dataclass(task):
        return
    for f in dataclasses.fields(task):
        default, value = f.default, getattr(task, f.name)
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "True or False"
        elif isinstance(default, int):
            ok, kind = isinstance(value, int) and not isinstance(value, bool), "an int"
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            kind = "a finite number"
        elif isinstance(default, str):
            ok, kind = isinstance(value, str), "a str"
        else:
            continue
        if not ok:
            raise ValueError(f"{task.name}: option {f.name} must be {kind}; got {value!r}")


def check_positive(**sizes: int) -> None:
    """Raise ``ValueError`` naming the first option that is not an int >= 1.

    Args:
        sizes: option name -> value.
    """
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be an int >= 1; got {value!r}")


def check_labels(labels: np.ndarray, n_classes: int, where: object) -> None:
    """Raise ``ValueError`` naming ``where`` unless every label is in ``[0, n_classes)``: a label outside would pass the
    loader and fail later inside the loss (or a CUDA assert), far from the file that held it.

    Args:
        labels: (B,) labels as read.
        n_classes: the number of classes.
        where: the file (or file and line) the labels came from, for the message.
    """
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        bad = labels[(labels < 0) | (labels >= n_classes)]
        raise ValueError(f"{where}: expected labels 0..{n_classes - 1}; got {len(bad)} outside, e.g. {bad[0]} "
                         f"(is this the right data set?)")


_TASKS: dict[str, type[Task]] = {}

T = TypeVar("T", bound=type)


def register_task(name: str) -> Callable[[T], T]:
    """Class decorator adding a task class to the registry under ``name`` (also stored as ``cls.name``).

    Args:
        name: the registry name (lower case, as typed on the command line).
    """

    def add(cls: T) -> T:
        if name in _TASKS and _TASKS[name] is not cls:
            raise ValueError(f"task name {name!r} is already registered by {_TASKS[name].__name__}")
        _TASKS[name] = cls
        cls.name = name
        return cls

    return add


def available_tasks() -> list[str]:
    """Sorted names of every registered task."""
    return sorted(_TASKS)


def get_task(name: str, **options: object) -> Task:
    """The task registered under ``name``, built with ``options`` (its dataclass fields; defaults otherwise).

    Args:
        name: a name from :func:`available_tasks`.
        options: the task's options (e.g. ``seed``, ``n_train``, ``length``), passed to its constructor.
    """
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; available tasks: {available_tasks()}")
    valid = [k for k in inspect.signature(_TASKS[name]).parameters]
    unknown = sorted(set(options) - set(valid))
    if unknown:  # a misspelt key of --task_options: one line from the CLI, not a traceback
        raise UnknownOptionError(f"task {name!r} has no option(s) {unknown}; its options are {valid}")
    return _TASKS[name](**options)


