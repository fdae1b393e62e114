"""Where data lives: the data root (``$SSMKIT_DATA``, default ``~/.cache/ssmkit``), atomic writes, the cache of
generated tasks, and the one-line error for a data set whose files are missing.

Every file ssmkit writes goes to a temporary name in the same folder first and is then renamed into place
(:func:`ssmkit.files.atomic_write`), so an interrupted run never leaves a half-written file that a later run would
trust.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
from typing import Callable

import torch

from ssmkit.files import atomic_write


class DataMissingError(FileNotFoundError):
    """A data set's files are not where ssmkit looks for them; the message is one line saying where to put them.

    Args:
        args: the message (one line), as for any exception.
        kwargs: none are used (FileNotFoundError's signature).
    """


def data_root(root: str | os.PathLike | None = None) -> pathlib.Path:
    """The folder holding every data set: ``root`` if given, else ``$SSMKIT_DATA``, else ``~/.cache/ssmkit``.

    Args:
        root: an explicit folder (wins over the environment variable).
    """
    if root is not None:
        return pathlib.Path(root).expanduser()
    env = os.environ.get("SSMKIT_DATA")
    return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "ssmkit"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    Args:
        path: the destination (its folder is created).
        data: the bytes to write.
    """
    atomic_write(path, lambda f: f.write(data))


def atomic_torch_save(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> None:
    """``torch.save`` a dict of tensors to ``path`` atomically (temporary name + rename).

    Args:
        path: the destination (its folder is created).
        tensors: name -> tensor (any shape); read back with ``torch.load(path, weights_only=True)``.
    """
    atomic_write(path, lambda f: torch.save(tensors, f))


@functools.lru_cache(maxsize=1)
def code_stamp() -> str:
    """What wrote a cache: SHA-256 (16 hex digits) of the sources of the ``ssmkit.data`` package, file by file.

    A cache built by a generator or decoder that has since changed (a fixed bug, another tokenisation) must not be
    read back as if the new code had written it, so every cache key holds this stamp: any change to the package's
    sources gives new keys, and the stale files are left unread (delete ``<root>/generated`` to reclaim their space).
    Where the sources are not on disk (a bytecode-only install) the stamp is that of ssmkit's version instead.
    """
    import ssmkit

    digest = hashlib.sha256()
    sources = sorted(pathlib.Path(__file__).parent.glob("*.py"))
    for source in sources:
        digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    if not sources:
        digest.update(f"ssmkit {ssmkit.__version__}".encode())
    return digest.hexdigest()[:16]


def cache_key(name: str, options: dict) -> str:
    """A short stable key for a generated task: SHA-256 of its name, options and :func:`code_stamp` (JSON with
    sorted keys).

    Args:
        name: the task name.
        options: the generator's options (JSON-serialisable), the seed included.
    """
    text = json.dumps({"task": name, "options": options, "code": code_stamp()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path(name: str, options: dict, root: str | os.PathLike | None = None) -> pathlib.Path:
    """Where the generated task ``name`` with ``options`` is cached: ``<root>/generated/<name>/<key>.pt``.

    Args:
        name: the task name.
        options: the generator's options, the seed included.
        root: the data root (default :func:`data_root`).
    """
    return data_root(root) / "generated" / name / f"{cache_key(name, options)}.pt"


def cached(
    name: str, options: dict, build: Callable[[], dict[str, torch.Tensor]], root: str | os.PathLike | None = None
) -> dict[str, torch.Tensor]:
    """Load the generated tensors of ``name``/``options`` from the cache, or build and cache them.

    The options and the code stamp are written next to the tensors (``<key>.json``) so the cache can be read by a
    person.

    Args:
        name: the task name.
        options: the generator's options, the seed included (the cache key).
        build: called with no argument when the cache is empty; returns name -> tensor.
        root: the data root (default :func:`data_root`).
    """
    path = cache_path(name, options, root)
    if path.exists():
        return torch.load(path, weights_only=True)
    tensors = build()
    atomic_write_bytes(path.with_suffix(".json"), json.dumps({"task": name, "options": options, "code": code_stamp()},
                                                                     indent=1).encode())
    atomic_torch_save(path, tensors)
    return tensors


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 hex digest of a file, read in 1 MiB blocks.

    Args:
        path: the file.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
