"""Files ssmkit writes get the permissions of any new file (0o666 less the umask), like ``open(path, "w")``.

Written through ``tempfile.mkstemp`` and a rename (the earlier ``ssmkit.files.atomic_write``), every result, checkpoint,
configuration and cached data set was 0o600: a data cache or a checkpoint written by one user, or by root while a
container image is built, could not be read by another user (PermissionError in ``torch.load``). docs/design.md,
"Probe 14".
"""

from __future__ import annotations

import os
import stat
import sys

import pytest
import torch

from ssmkit.data.store import cached
from ssmkit.files import atomic_write, write_json, write_text
from ssmkit.train.checkpoint import load_checkpoint, save_atomic

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    old = os.umask(request.param)  # process-wide: restored at once after the test
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_every_writer_gives_the_mode_of_a_new_file(tmp_path, umask):
    plain = tmp_path / "plain.txt"
    with open(plain, "w") as f:  # the reference: what Python's own open gives a new file under this umask
        f.write("x")
    expected = mode(plain)
    assert expected == 0o666 & ~umask
    write_text(tmp_path / "a.md", "text")
    write_json(tmp_path / "b.json", {"a": 1})
    atomic_write(tmp_path / "c.bin", lambda f: f.write(b"\0\1"))
    save_atomic({"w": torch.arange(3.0)}, tmp_path / "d.pt")
    data = cached("probe14", {"seed": 0}, lambda: {"x": torch.arange(4.0)}, root=tmp_path / "data")
    written = [tmp_path / n for n in ("a.md", "b.json", "c.bin", "d.pt")]
    written += sorted((tmp_path / "data").rglob("*.*"))  # the cached tensors and their options (.pt, .json)
    assert len(written) == 6
    assert {str(p.relative_to(tmp_path)): oct(mode(p)) for p in written} == {
        str(p.relative_to(tmp_path)): oct(expected) for p in written
    }
    # and the contents are whole
    assert (tmp_path / "a.md").read_text() == "text"
    assert torch.equal(load_checkpoint(tmp_path / "d.pt")["w"], torch.arange(3.0))
    assert torch.equal(data["x"], torch.arange(4.0))


def test_an_overwrite_takes_a_new_files_mode_and_leaves_no_temporary(tmp_path, umask):
    target = tmp_path / "r.json"
    write_json(target, [1])
    os.chmod(target, 0o600)
    write_json(target, [2])  # a rename: the new file's mode, as for a file written afresh
    assert mode(target) == 0o666 & ~umask
    assert target.read_text() == "[\n  2\n]"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


class _FailingFigure:
    """A figure whose savefig writes part of a PNG, then fails (a full disk, a killed renderer)."""

    def savefig(self, f, format, dpi):
        f.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
        raise OSError(28, "No space left on device")


def test_save_figure_writes_whole_or_leaves_the_old_file(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ssmkit.files import save_figure

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = tmp_path / "plots" / "curve.png"
    save_figure(fig, path)
    plt.close(fig)
    old = path.read_bytes()
    assert old[:8] == b"\x89PNG\r\n\x1a\n" and len(old) > 1000
    with pytest.raises(OSError, match="No space left"):
        save_figure(_FailingFigure(), path)
    assert path.read_bytes() == old  # the previous plot, whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["curve.png"]  # no temporary left


def test_copy_stream_writes_whole_or_nothing(tmp_path):
    import io

    from ssmkit.files import copy_stream

    class Broken(io.BytesIO):
        def read(self, n=-1):
            if self.tell() >= 4:
                raise OSError("truncated archive")
            return super().read(4)

    copy_stream(tmp_path / "a.bin", io.BytesIO(b"0123456789"))
    assert (tmp_path / "a.bin").read_bytes() == b"0123456789"
    with pytest.raises(OSError, match="truncated"):
        copy_stream(tmp_path / "b.bin", Broken(b"0123456789"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
