"""Files written whole or not at all.

Every file ssmkit writes (benchmark and training results, checkpoints, configurations, reports, plots, cached data)
goes to a temporary name in the target's folder, is flushed to disk and renamed into place (``os.replace`` is atomic on
POSIX and Windows), so an interrupted run never leaves a half-written file that a later run would trust; a write that
fails removes its temporary and leaves the previous file as it was. The file gets the permissions of any new file
(0o666 less the process's umask: 0o644 under the usual 022), as ``open(path, "w")`` would give it: a data cache, a
checkpoint or a result written by one user (or by root while a container image is built) stays readable by the others.
(``tempfile.mkstemp`` creates 0o600 files, and a rename keeps them so.)
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import secrets
import shutil
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
    fd, tmp = _create_temporary(path)
    try:
        with (os.fdopen(fd, "w", encoding="utf-8", newline="") if text else os.fdopen(fd, "wb")) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _create_temporary(path: pathlib.Path) -> tuple[int, str]:
    """A new file beside ``path`` (``.<name>.<random>.tmp``), opened for writing: (descriptor, name). Created with mode
    0o666, which the kernel reduces by the umask, as for any new file (``tempfile.mkstemp`` would make it 0o600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # a name drawn twice (2^-64 per pair): draw again
            continue


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write the string ``text`` to ``path`` atomically.

    Args:
        path: the destination (its folder is created).
        text: the contents.
    """
    atomic_write(path, lambda f: f.write(text), text=True)


def finite_or_null(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf) replaced by None, through dicts, lists and tuples (a tuple
    becomes a list, as JSON writes it); other values as they are.

    Args:
        obj: a JSON-ready structure.

    Returns:
        the same structure, JSON's ``null`` where a number was NaN or infinite.
    """
    if isinstance(obj, float):  # numpy's float64 too (a float subclass)
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return obj


def strict_json(obj: Any, indent: int = 2, default: Callable[[Any], Any] | None = None) -> str:
    """``obj`` as strict JSON text (RFC 8259, which has no NaN or Infinity): every non-finite float written as
    ``null`` (:func:`finite_or_null`: an undefined NRMSE or fit, a diverged run's score, the inf best values of a run
    without validation), where Python's ``json`` would write the tokens ``NaN`` and ``-Infinity`` that JavaScript's
    ``JSON.parse``, jq and most other readers refuse. ``allow_nan=False`` guards the rest: a non-finite number that
    :func:`finite_or_null` does not reach (a float dict key) raises ValueError instead of writing invalid JSON.

    Args:
        obj: the JSON-ready structure.
        indent: as for ``json.dumps``.
        default: as for ``json.dumps``: how to write an object JSON has no type for (None: TypeError).

    Returns:
        the JSON text.
    """
    return json.dumps(finite_or_null(obj), indent=indent, default=default, allow_nan=False)


def write_json(path: str | os.PathLike, obj: object, indent: int = 2, strict: bool = False) -> None:
    """``json.dump(obj)`` into ``path`` atomically (the benchmarks' and the trainer's JSON files).

    Args:
        path: the destination (its folder is created).
        obj: a JSON-serialisable object.
        indent: as for ``json.dump``.
        strict: strict JSON (:func:`strict_json`: NaN and ±inf written as null) for files of results, whose scores may
            be undefined or diverged; False (Python's ``NaN``/``Infinity`` tokens) for configurations read back by
            ssmkit, where an inf option must come back as inf.
    """
    text = strict_json(obj, indent) if strict else json.dumps(obj, indent=indent)
    atomic_write(path, lambda f: f.write(text), text=True)


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> None:
    """``fig.savefig`` into ``path`` atomically, in the format of the path's suffix (``.png``, ``.pdf``, ``.svg``).

    Args:
        fig: a matplotlib figure.
        path: the destination (its folder is created).
        dpi: the resolution of raster formats.
    """
    suffix = pathlib.Path(path).suffix.lstrip(".").lower() or "png"
    atomic_write(path, lambda f: fig.savefig(f, format=suffix, dpi=dpi))


def copy_stream(path: str | os.PathLike, source: IO[bytes]) -> None:
    """The bytes of the open binary file ``source`` into ``path`` atomically (an archive member being extracted).

    Args:
        path: the destination (its folder is created).
        source: a readable binary file object.
    """
    atomic_write(path, lambda f: shutil.copyfileobj(source, f))
