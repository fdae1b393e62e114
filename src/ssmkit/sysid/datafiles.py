"""Where benchmark files are looked for, how they are checked, and how arrays become records' tensors."""

from __future__ import annotations

import hashlib
import os
import pathlib

import numpy as np
import torch


def default_folder(name: str) -> pathlib.Path:
    """``$SSMKIT_DATA/sysid/<name>`` (``$SSMKIT_DATA`` defaults to ``~/.cache/ssmkit``; a leading ``~`` in it is the
    home folder, as for the tasks' data root).

    Args:
        name: the benchmark's folder name (``cascaded_tanks``, ``f16gvt``, ``bouc_wen``, ``silverbox``, ...).
    """
    root = os.environ.get("SSMKIT_DATA") or os.path.join("~", ".cache", "ssmkit")
    return pathlib.Path(root).expanduser() / "sysid" / name


def benchmark_folder(folder: str | os.PathLike | None, name: str) -> pathlib.Path:
    """The folder a loader reads: ``folder`` with a leading ``~`` expanded (``"~/.nonlinear_benchmarks"``, the
    ``nonlinear_benchmarks`` cache root, as the docs give it), or :func:`default_folder` for None.

    Args:
        folder: the user's folder, or None.
        name: the benchmark's folder name under the data root.
    """
    if folder is None:
        return default_folder(name)
    if not isinstance(folder, (str, os.PathLike)):
        raise ValueError(f"folder must be a path (str or os.PathLike) or None; got {type(folder).__name__} {folder!r}")
    return pathlib.Path(folder).expanduser()


def find_file(folder: pathlib.Path, file_name: str, layouts: tuple[str, ...], benchmark: str, source: str) -> pathlib.Path:
    """The file ``file_name`` in ``folder`` itself or in one of the sub-folders ``layouts`` (the
    ``nonlinear_benchmarks`` cache layout, so its cache root can be passed as ``folder``); a missing file raises
    FileNotFoundError in one line saying what to put where.

    Args:
        folder: the user's folder.
        file_name: the official file's name.
        layouts: sub-folders of ``folder`` also searched, in order.
        benchmark: the benchmark's title, for the message.
        source: where the official file comes from, for the message.
    """
    candidates = [folder / file_name] + [folder / sub / file_name for sub in layouts]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{benchmark}: {file_name} not found: put the official file in {folder} ({source})")


def check_sha256(path: pathlib.Path, expected: str) -> None:
    """Raise ValueError unless the file's SHA-256 is ``expected`` (pass ``check=False`` to a loader to skip)."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected:
        raise ValueError(f"{path} is not the official file: SHA-256 {digest}, expected {expected} (check=False skips this)")


def check_length(path: pathlib.Path, found: int, expected: int) -> None:
    """Raise ValueError unless a record read from ``path`` has the official number of samples."""
    if found != expected:
        raise ValueError(f"{path} is not the official file: {found} samples, expected {expected} (check=False skips this)")


def to_channels(*arrays: np.ndarray) -> torch.Tensor:
    """Equally long 1-D arrays (one per channel) as an (L, channels) float64 tensor."""
    return torch.as_tensor(np.stack([np.asarray(a, dtype=np.float64).ravel() for a in arrays], axis=1), dtype=torch.float64)
