"""Safe extraction of tar and zip archives (data-set releases such as ``lra_release.gz`` or
``speech_commands_v0.02.tar.gz``).

Every member is checked before anything is written: a member whose path is absolute or would land outside the
target folder (``../``), a symbolic or hard link, a device, a FIFO or any other non-regular entry makes the whole
archive refused with a ``ValueError`` naming the member. Only directories and regular files are written, with
their bytes streamed by us (never ``extractall``), so permissions, owners and timestamps from the archive are not
applied. An archive that is cut short (an interrupted download) or corrupt is a ``ValueError`` naming the archive
(tar: found while listing the members, before anything is written; zip: a member whose CRC fails, after the members
before it); each file is written whole or not at all.
"""

from __future__ import annotations

import gzip
import lzma
import os
import pathlib
import stat
import tarfile
import zipfile
import zlib

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
        written = []
        for m, path in plan:  # 2. write directories and regular files only
            if m.isdir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            with tar.extractfile(m) as src:
                copy_stream(path, src)  # whole or not at all
            written.append(path)
    return written


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
        written = []
        for info, path in plan:  # 2. write directories and regular files only
            if info.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            with z.open(info) as src:
                copy_stream(path, src)  # whole or not at all
            written.append(path)
    return written
