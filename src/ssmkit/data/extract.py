"""Safe extraction of tar and zip archives (data-set releases such as ``lra_release.gz`` or
``speech_commands_v0.02.tar.gz``).

Every member is checked before anything is written: a member whose path is absolute or would land outside the
target folder (``../``), a symbolic or hard link, a device, a FIFO or any other non-regular entry makes the whole
archive refused with a ``ValueError`` naming the member. Only directories and regular files are written, with
their bytes streamed by us (never ``extractall``), so permissions, owners and timestamps from the archive are not
applied. An archive that is cut short (an interrupted download) or corrupt is a ``ValueError`` naming the archive
(tar: found while listing the members; zip: a member whose CRC fails, named too). Nothing is half-written: the
members are extracted into a temporary folder inside the target (``.ssmkit-extract-<random>``) and renamed into
place only once every one of them was read whole, so a failure leaves the target folder (created) as it was.
"""

from __future__ import annotations

import gzip
import lzma
import os
import pathlib
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from typing import IO, Callable

from ssmkit.files import copy_stream


def _inside(target: pathlib.Path, name: str) -> pathlib.Path:
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise ValueError(f"refusing archive member {name!r}: absolute path")
    path = (target / name).resolve()
    if path != target and target not in path.parents:
        raise ValueError(f"refusing archive member {name!r}: it would land outside {target}")
    return path


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike) -> list[pathlib.Path]:
    """Extract a tar (any compression) or zip archive into ``target``, refusing unsafe members.

    Args:
        archive: the .tar, .tar.gz, .tgz, .tar.xz, .tar.bz2 or .zip file.
        target: the folder to extract into (created).

    Returns:
        the paths of the files written.
    """
    archive = pathlib.Path(archive)
    target = pathlib.Path(target)
    target.mkdir(parents=True, exist_ok=True)
    target = target.resolve()
    try:
        if zipfile.is_zipfile(archive):
            return _extract_zip(archive, target)
        if tarfile.is_tarfile(archive):
            return _extract_tar(archive, target)
    except _BROKEN as error:  # EOFError and TarError are not OSErrors: `ssmkit data extract` showed a traceback
        raise ValueError(f"{archive}: the archive is cut short or corrupt ({type(error).__name__}: {error}); "
                         "download it again") from error
    with open(archive, "rb") as f:
        if f.read(4) == b"PK\x03\x04":  # a zip's first member but no central directory: the end is missing
            raise ValueError(f"{archive}: a zip archive without its central directory (cut short?); download it again")
    raise ValueError(f"{archive}: neither a tar nor a zip archive")


# what reading a truncated or damaged archive raises (tarfile, zipfile and the gzip / xz decompressors)
_BROKEN = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)


def _extract_tar(archive: pathlib.Path, target: pathlib.Path) -> list[pathlib.Path]:
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        plan = []
        for m in members:  # 1. check every member before writing anything
            if m.issym() or m.islnk():
                raise ValueError(f"refusing archive member {m.name!r}: a link")
            if not (m.isfile() or m.isdir()):
                raise ValueError(f"refusing archive member {m.name!r}: a device, FIFO or other special file")
            plan.append((m, _inside(target, m.name)))
        return _write_all(archive, target, [(m.name, m.isdir(), path, lambda m=m: tar.extractfile(m))
                                            for m, path in plan])  # 2. directories and regular files only


def _extract_zip(archive: pathlib.Path, target: pathlib.Path) -> list[pathlib.Path]:
    with zipfile.ZipFile(archive) as z:
        plan = []
        for info in z.infolist():  # 1. check every member before writing anything
            kind = stat.S_IFMT(info.external_attr >> 16)  # Unix file type bits; 0 when the archiver gave none
            if kind == stat.S_IFLNK:
                raise ValueError(f"refusing archive member {info.filename!r}: a link")
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise ValueError(f"refusing archive member {info.filename!r}: a device, FIFO or other special file")
            plan.append((info, _inside(target, info.filename)))
        return _write_all(archive, target, [(info.filename, info.is_dir(), path, lambda info=info: z.open(info))
                                            for info, path in plan])  # 2. directories and regular files only


def _write_all(archive: pathlib.Path, target: pathlib.Path,
               plan: list[tuple[str, bool, pathlib.Path, Callable[[], IO[bytes]]]]) -> list[pathlib.Path]:
    """Write the checked members (name, is a directory, destination, opener) all or none: each into a temporary folder
    inside ``target`` first, then, once every one was read whole (a zip member's CRC checked at its end), renamed into
    place. A member that cannot be read is a ``ValueError`` naming the archive and the member; the temporary folder
    is removed in every case.

    Returns:
        the destinations of the files written, in the archive's order.
    """
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".ssmkit-extract-", dir=target))
    try:
        for name, is_dir, path, opener in plan:  # 1. everything into the temporary folder
            temporary = staging / path.relative_to(target)
            if is_dir:
                temporary.mkdir(parents=True, exist_ok=True)
                continue
            try:
                with opener() as src:
                    copy_stream(temporary, src)
            except _BROKEN as error:
                raise ValueError(f"{archive}: the archive is cut short or corrupt ({type(error).__name__}: {error}) "
                                 f"in member {name!r}; nothing was extracted; download it again") from error
        written = []
        for _, is_dir, path, _ in plan:  # 2. into place: directories made, files renamed (the same file system)
            if is_dir:
                path.mkdir(parents=True, exist_ok=True)
                continue
            temporary = staging / path.relative_to(target)
            if temporary.exists():  # else a second member of the same name, already moved (the last one wins)
                path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(temporary, path)
            written.append(path)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)
