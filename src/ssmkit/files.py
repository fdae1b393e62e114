"""Files written whole or not at all.

Every file ssmkit writes (benchmark and training results, checkpoints, configurations, reports, plots, cached data)
goes to a temporary name in the target's folder, is flushed to disk and renamed into place (``os.replace`` is atomic on
POSIX and Windows), so an interrupted run never leaves a half-written file that a later run would trust; a write that
fails removes its temporary and leaves the previous file as it was.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import IO, Any, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[IO], Any], text: bool = False) -> None:
    """Call ``write(f)`` on a file that becomes ``path`` only when it returns.

    Args:
        path: the destination (its folder is created).
        write: a function of the open file.
        text: open it as text (UTF-8, ``newline=""`` as the csv module wants) rather than binary.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with (os.fdopen(fd, "w", encoding="utf-8", newline="") if text else os.fdopen(fd, "wb")) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write the string ``text`` to ``path`` atomically.

    Args:
        path: the destination (its folder is created).
        text: the contents.
    """
    atomic_write(path, lambda f: f.write(text), text=True)


def write_json(path: str | os.PathLike, obj: object, indent: int = 2) -> None:
    """``json.dump(obj)`` into ``path`` atomically (the benchmarks' and the trainer's JSON files).

    Args:
        path: the destination (its folder is created).
        obj: a JSON-serialisable object.
        indent: as for ``json.dump``.
    """
    atomic_write(path, lambda f: json.dump(obj, f, indent=indent), text=True)
