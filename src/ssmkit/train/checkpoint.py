"""Checkpoint files written atomically and read with ``torch.load(weights_only=True)``.

A checkpoint is written to a temporary name in the target folder, flushed to disk, and renamed over the target, so a
run killed while saving leaves the previous checkpoint intact, never half a file. Reading uses ``weights_only=True``:
a checkpoint holds tensors and plain containers only, and loading one cannot run code. :class:`AtomicCheckpointIO`
puts both behind Lightning's ``CheckpointIO`` interface (Lightning itself is imported only here and in the trainer).
:class:`PeriodicCheckpoints` writes ``step<N>.ckpt`` and ``last.ckpt``, each replacing the one before, across resumes.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import CheckpointIO

from ssmkit.files import atomic_write


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through a temporary file in the same folder and an atomic rename.

    Args:
        obj: what to save (tensors and plain containers, so that it loads with ``weights_only=True``).
        path: the file to write; its folder is created if needed.
    """
    atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> dict:
    """Read a checkpoint with ``weights_only=True`` (no code runs while loading).

    Args:
        path: the checkpoint file.
        map_location: where to put its tensors (default the CPU).

    Returns:
        the checkpoint dict.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {os.fspath(path)!r}")
    return torch.load(path, map_location=map_location, weights_only=True)


class AtomicCheckpointIO(CheckpointIO):
    """Lightning checkpoint I/O: atomic writes (:func:`save_atomic`), ``weights_only=True`` reads."""

    def save_checkpoint(self, checkpoint: dict, path: str | os.PathLike, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise ValueError("AtomicCheckpointIO takes no storage_options")
        save_atomic(checkpoint, path)

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        return load_checkpoint(path, map_location if map_location is not None else "cpu")

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        if os.path.exists(path):
            os.remove(path)


class PeriodicCheckpoints(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` writing ``<dirpath>/step<N>.ckpt`` every ``every`` steps (each removing the one
    before) and ``last.ckpt``, whose state survives a resume with another period.

    Its state (the newest files, which the next write replaces) is kept in every checkpoint under a key that does not
    name the period, and a name already taken is overwritten, never versioned: under ModelCheckpoint's key, which
    names ``every_n_train_steps``, a resume with another ``checkpoint_every`` found no state, kept the old
    ``step<N>.ckpt`` for good and wrote the newest checkpoints to ``last-v1.ckpt`` beside the older ``last.ckpt`` it
    resumes from, and a run killed between writing ``step<N>.ckpt`` and ``last.ckpt`` left that ``step<N>.ckpt``
    behind. A state saved under ModelCheckpoint's own key (checkpoints written before) is read too.

    Args:
        dirpath: the checkpoint folder.
        every: optimizer steps between checkpoints.
    """

    def __init__(self, dirpath: str | os.PathLike, every: int) -> None:
        super().__init__(dirpath=dirpath, filename="step{step}", every_n_train_steps=every, save_last=True,
                         save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor)

    def on_load_checkpoint(self, trainer: Any, module: Any, checkpoint: dict) -> None:
        states = checkpoint.get("callbacks") or {}
        if self.state_key not in states:
            older = [v for k, v in states.items() if isinstance(k, str) and k.startswith("ModelCheckpoint{")]
            if len(older) == 1:
                self.load_state_dict(dict(older[0]))
